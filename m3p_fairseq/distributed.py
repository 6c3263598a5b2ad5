"""fairseq's own launchers on machines without CUDA, and ``--bf16`` without a TPU.

fairseq 0.12 assumes one GPU per worker when it sets up distributed training. Without CUDA:

* ``torchrun ... -m fairseq_cli.train``: the rank is taken modulo the CUDA device count
  (ZeroDivisionError); and the default ``--distributed-world-size`` is the GPU count, 1 here, so
  without that flag every torchrun process quietly trains its own copy of the model;
* ``--distributed-init-method tcp://...`` without ``--distributed-no-spawn`` spawns
  min(GPUs, world size) = 0 processes and exits 0 having trained nothing;
* ``--ddp-backend pytorch_ddp`` (the default) passes ``device_ids=[device_id]`` to torch's
  DistributedDataParallel, which refuses it for a module on the CPU.

And on any machine, ``--bf16`` on the ``fairseq-train`` command line also switches on ``--tpu``
(fairseq's option handling), which fails without torch_xla; and after ``torchrun --max-restarts``
restarts a group whose worker died, the new workers read the dead ones' addresses from the
launcher's store and fail to connect.

``install()`` (run when the plugin is imported) replaces five module-level names of fairseq that
fairseq looks up at call time, each by a wrapper that calls fairseq's own function
(``patching.py``), and registers a rendezvous (``m3p-env://``) that torchrun workers use instead of
``env://``: the same, with store keys per restart attempt. The other wrappers change something
only when there is no CUDA device (or for ``--bf16`` when torch_xla is absent).
"""
import logging
import os

import torch
from fairseq.utils import safe_getattr

from .errors import M3PInputError, is_plugin_class

logger = logging.getLogger(__name__)

TORCHRUN_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")


def _no_cuda():
    return not torch.cuda.is_available()


def _launched_by_torchrun():
    return all(k in os.environ for k in TORCHRUN_ENV)


# torch's env:// rendezvous with its store keys under the restart attempt (see _attempt_scoped_env)
ATTEMPT_SCOPED_ENV = "m3p-env"


def _attempt_scoped_env(url, **kwargs):
    """torch's env:// rendezvous, its store keys prefixed with torchrun's restart attempt.

    Under torchrun the workers' store is the elastic agent's, which outlives a restart: the
    workers of the next attempt found the addresses the dead ones had published and failed with
    "Gloo connectFullMesh failed ... Connection refused" (measured with torch 2.13 and plain
    init_process_group + new_group, no fairseq). A prefix per attempt gives each attempt fresh keys.
    """
    from torch.distributed import PrefixStore
    from torch.distributed.rendezvous import rendezvous

    query = url.split("?", 1)[1] if "?" in url else ""
    store, rank, world_size = next(rendezvous("env://?" + query, **kwargs))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    yield PrefixStore(f"/m3p/attempt_{attempt}", store), rank, world_size


def _torchrun_init_method():
    return f"{ATTEMPT_SCOPED_ENV}://" if "TORCHELASTIC_RESTART_COUNT" in os.environ else "env://"


def _cpu_torchrun_init(original):
    """fairseq's torchrun inference, with device 0 for every rank when there is no GPU, and a
    rendezvous that survives torchrun's restarts."""

    def infer(cfg):
        if not _no_cuda():
            original(cfg)
            if cfg.distributed_init_method == "env://":
                cfg.distributed_init_method = _torchrun_init_method()
            return None
        cfg.distributed_init_method = _torchrun_init_method()
        cfg.distributed_world_size = int(os.environ["WORLD_SIZE"])
        cfg.distributed_rank = int(os.environ["RANK"])
        cfg.device_id = 0  # names a GPU in fairseq; on the CPU every worker has the same one
        cfg.distributed_no_spawn = True  # torchrun started the processes
        return None

    return infer


def _cpu_slurm_init(original):
    """fairseq's SLURM inference; without a GPU the local task id must not become a CUDA device."""

    def infer(cfg, num_pipelines_per_node):
        found = original(cfg, num_pipelines_per_node)
        if found and _no_cuda():
            # infer_init_method calls torch.cuda.set_device(device_id) when it is > 0
            cfg.device_id = 0
        return found

    return infer


def _cpu_infer_init_method(original):
    """Without CUDA: take the world size from torchrun, and refuse a launch that cannot start workers."""

    def infer(cfg, force_distributed=False):
        if _no_cuda() and cfg.distributed_init_method is None and not cfg.tpu:
            if _launched_by_torchrun():
                env_size = int(os.environ["WORLD_SIZE"])
                # the default world size is the GPU count (1 here): without this each process trains alone
                if cfg.distributed_world_size in (1, env_size):
                    cfg.distributed_world_size = env_size
                else:
                    raise M3PInputError(f"--distributed-world-size {cfg.distributed_world_size} does not match "
                                        f"torchrun's WORLD_SIZE={env_size}")
            elif cfg.distributed_world_size > 1 and not _slurm_env():
                raise M3PInputError(
                    f"--distributed-world-size {cfg.distributed_world_size} without CUDA: fairseq starts one "
                    f"process per GPU (0 here); start one process per worker with `torchrun --nproc_per_node "
                    f"{cfg.distributed_world_size} -m fairseq_cli.train ...`")
        return original(cfg, force_distributed)

    return infer


def _slurm_env():
    return "SLURM_STEP_NODELIST" in os.environ or "SLURM_JOB_NODELIST" in os.environ


def _checked_call_main(original):
    """fairseq's call_main, after the checks that stock fairseq lacks on CPU and for --bf16."""

    def call_main(cfg, main, **kwargs):
        from fairseq.distributed import utils as du

        _bf16_without_tpu(cfg)
        dt = cfg.distributed_training
        cpu = _no_cuda() or cfg.common.cpu
        if _no_cuda() and not cfg.common.tpu:
            if dt.distributed_init_method is None:
                du.infer_init_method(dt)  # what call_main does first; it skips it once the method is set
            if dt.distributed_init_method is not None and not dt.distributed_no_spawn:
                # fairseq would spawn min(GPUs, world size) = 0 workers and exit 0 having trained nothing
                raise M3PInputError(
                    f"--distributed-init-method {dt.distributed_init_method} without CUDA and without "
                    f"--distributed-no-spawn starts no worker; use `torchrun --nproc_per_node "
                    f"{dt.distributed_world_size} -m fairseq_cli.train ...`, or start each worker yourself with "
                    f"--distributed-no-spawn --distributed-rank R")
        if cpu and dt.distributed_init_method is not None and dt.distributed_backend == "nccl":
            logger.info("no GPU: distributed backend nccl -> gloo")
            dt.distributed_backend = "gloo"
        _find_unused_parameters_for_m3p(cfg)
        return original(cfg, main, **kwargs)

    return call_main


def _find_unused_parameters_for_m3p(cfg):
    """M3P's objectives train different heads of one model (xMLM leaves the region stream, MRM and VLM
    heads without gradients): torch's DDP then fails at the second update unless it looks for unused
    parameters. fairseq leaves that off by default; for this plugin's tasks it is switched on.

    With --checkpoint-activations that is not enough: fairseq's checkpoints are reentrant (each layer's
    backward runs inside the checkpoint's own), and torch's DDP, looking for unused parameters, then
    fails with "marked ready twice" (measured on 2 CPU workers). Those runs go to fairseq's legacy_ddp,
    which all-reduces the gradients once the backward pass is over."""
    from fairseq.tasks import TASK_REGISTRY

    dt = cfg.distributed_training
    task = TASK_REGISTRY.get(getattr(cfg.task, "_name", None))
    ours = task is not None and is_plugin_class(task)
    if not ours or dt.ddp_backend not in ("c10d", "pytorch_ddp"):
        return
    checkpointed = any(safe_getattr(cfg.model, k, False) for k in ("checkpoint_activations", "offload_activations"))
    if checkpointed and dt.distributed_world_size > 1:
        logger.info("--checkpoint-activations: --ddp-backend legacy_ddp (torch's DDP cannot find M3P's unused "
                    "parameters through fairseq's reentrant checkpoints)")
        dt.ddp_backend = "legacy_ddp"
    elif not dt.find_unused_parameters:
        if dt.distributed_world_size > 1:  # unused (and not worth a line) in a single-process run
            logger.info("M3P's objectives use different heads: --find-unused-parameters on for pytorch_ddp "
                        "(--ddp-backend legacy_ddp needs no detection)")
        dt.find_unused_parameters = True


def _bf16_without_tpu(cfg):
    """``--bf16`` implies ``--tpu`` in fairseq's argparse handling; without torch_xla that is
    never what the user meant, so bf16 runs on the GPU (or CPU) through fairseq's FP16Optimizer."""
    from fairseq.distributed import utils as du

    common = cfg.common
    if common.bf16 and common.tpu and du.xm is None:
        logger.info("--bf16 without torch_xla: training in bfloat16 on the GPU/CPU, not on a TPU")
        common.tpu = False
        if "tpu" in cfg.distributed_training:
            cfg.distributed_training.tpu = False


def _device_aware_ddp(ddp_class):
    """torch's DistributedDataParallel, given ``device_ids=None`` for a module on the CPU
    (it accepts device ids for single-device CUDA modules only)."""

    def build(module, device_ids=None, output_device=None, **kwargs):
        param = next(module.parameters(), None)
        if param is not None and param.device.type == "cpu":
            device_ids = output_device = None
        return ddp_class(module, device_ids=device_ids, output_device=output_device, **kwargs)

    build._m3p_wraps = ddp_class
    return build


def install():
    from fairseq.distributed import utils as du
    from fairseq.models import distributed_fairseq_model as dfm
    from torch.distributed.rendezvous import register_rendezvous_handler

    from .patching import patch

    try:
        register_rendezvous_handler(ATTEMPT_SCOPED_ENV, _attempt_scoped_env)
    except RuntimeError:
        pass  # registered already (the plugin imported twice)

    patch(du, "_infer_torch_distributed_launch_init", _cpu_torchrun_init)
    patch(du, "_infer_slurm_init", _cpu_slurm_init)
    patch(du, "infer_init_method", _cpu_infer_init_method)
    # call_main calls infer_init_method through the module, so it gets the patched one too
    patch(du, "call_main", _checked_call_main)
    patch(dfm, "DistributedDataParallel", _device_aware_ddp)
