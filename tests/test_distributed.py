"""Distributed pre-training through fairseq's own launchers on the CPU, and the mixed-precision flags.

The main test starts 2 CPU workers (gloo) with ``torchrun -m fairseq_cli.train`` and compares them
with one process that accumulates the same 4 micro-batches per update: same objective per update on
every worker and micro-batch, same losses. The other tests cover the launches that stock fairseq gets
wrong without CUDA, the patched config inference (no processes), ``--bf16`` /
``--memory-efficient-fp16`` from the command line, a lost worker's restart, and ``--zero-sharding os``
with activation checkpointing saved and resumed.
"""
import json
import math
import os
import signal
import subprocess

import pytest
import torch

from .conftest import BIN, ROOT, run

OBJECTIVES = ("xmlm", "mmlm", "mrm", "vlm")


def _train_args(data, save_dir, updates, extra=()):
    # pooler dropout 0 as well: dropout masks are drawn per worker, so they differ from one process's
    return [data, "--user-dir", "m3p_fairseq", "--task", "multitask_multimodal", "--arch", "m3p_tiny",
            "--criterion", "m3p_pretrain", "--pooler-dropout", "0", "--objective-ratios", "1,1,1,1",
            "--optimizer", "adam", "--lr", "1e-3", "--max-update", str(updates), "--batch-size", "8", "--cpu",
            "--num-workers", "0", "--seed", "1", "--save-dir", save_dir, "--no-save", "--disable-validation",
            "--log-format", "json", "--log-interval", "1", *extra]


def _updates(res):
    """The train_inner records (one per update with --log-interval 1), written by rank 0 only."""
    recs = [json.loads(line[line.index("{"):]) for line in (res.stdout + res.stderr).splitlines()
            if "| train_inner |" in line and "{" in line]
    return {int(r["num_updates"]): r for r in recs}


def _stop_launcher(proc):
    """End torchrun and its workers (each worker has a session of its own: killing torchrun's group
    would leave them running)."""
    workers = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in workers.values():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run_group(cmd, timeout=300):
    """run() for a launcher: on timeout, end the launcher and its workers."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=ROOT,
               PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_launcher(proc)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(cmd)} did not finish in {timeout} s:\n{out[-2000:]}\n{err[-2000:]}")
    res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    assert res.returncode == 0, f"{' '.join(cmd)} failed ({res.returncode}):\n{out[-3000:]}\n{err[-3000:]}"
    return res


def _objective_counts(rec):
    return {o: float(rec[f"{o}_batches"]) for o in OBJECTIVES if float(rec.get(f"{o}_batches") or 0) > 0}


def test_torchrun_two_cpu_workers_match_one_process(tiny_world, tmp_path):
    updates = 8
    # no --distributed-world-size: without CUDA fairseq's default is 1, the plugin takes torchrun's
    two = _run_group([os.path.join(BIN, "torchrun"), "--standalone", "--nproc_per_node", "2", "-m",
                      "fairseq_cli.train", *_train_args(tiny_world["data"], str(tmp_path / "two"), updates,
                                                        ["--update-freq", "2", "--distributed-backend", "gloo"])])
    one = run([os.path.join(BIN, "fairseq-train"),
               *_train_args(tiny_world["data"], str(tmp_path / "one"), updates, ["--update-freq", "4"])], timeout=300)
    dist, single = _updates(two), _updates(one)
    assert sorted(dist) == list(range(1, updates + 1)), two.stderr[-3000:]
    assert sorted(single) == list(range(1, updates + 1)), one.stderr[-3000:]
    seen = set()
    for step in range(1, updates + 1):
        d, s = dist[step], single[step]
        # summed over both workers and both micro-batches: one objective, 4 batches, none of another
        counts = _objective_counts(d)
        assert len(counts) == 1 and list(counts.values()) == [4.0], (step, counts)
        assert counts == _objective_counts(s), (step, counts, _objective_counts(s))
        seen.update(counts)
        assert float(d["bsz"]) == float(s["bsz"]) == 32  # 2 workers x 2 micro-batches x 8
        assert float(d["wpb"]) == float(s["wpb"])
        assert math.isclose(float(d["loss"]), float(s["loss"]), rel_tol=2e-3, abs_tol=2e-3), (step, d["loss"], s["loss"])
    assert len(seen) >= 3, seen  # the check covered more than one objective


def _expect_one_line_error(res, *needles):
    assert res.returncode != 0, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    for n in needles:
        assert n in last, (n, res.stderr[-2000:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the launches below are only wrong without CUDA")
def test_launches_that_start_no_worker_fail_loudly(tiny_world, tmp_path):
    # stock fairseq spawns min(GPUs, world size) = 0 processes here and exits 0 having trained nothing
    res = run([os.path.join(BIN, "fairseq-train"),
               *_train_args(tiny_world["data"], str(tmp_path / "a"), 2,
                            ["--distributed-world-size", "2", "--distributed-init-method", "tcp://localhost:29999"])],
              check=False)
    _expect_one_line_error(res, "starts no worker", "torchrun --nproc_per_node 2")
    res = run([os.path.join(BIN, "fairseq-train"),
               *_train_args(tiny_world["data"], str(tmp_path / "b"), 2, ["--distributed-world-size", "2"])],
              check=False)
    _expect_one_line_error(res, "--distributed-world-size 2 without CUDA", "torchrun")


def _distributed_cfg(tiny_world, extra=()):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [tiny_world["data"], "--task", "multitask_multimodal", "--arch",
                                                "m3p_tiny", "--criterion", "m3p_pretrain", "--cpu", *extra])
    return convert_namespace_to_omegaconf(args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU inference only")
def test_torchrun_env_gives_rank_world_size_and_device_0(tiny_world, monkeypatch):
    from fairseq.distributed import utils as du

    cfg = _distributed_cfg(tiny_world)
    for k, v in {"MASTER_ADDR": "localhost", "MASTER_PORT": "29500", "WORLD_SIZE": "4", "RANK": "3"}.items():
        monkeypatch.setenv(k, v)
    du.infer_init_method(cfg.distributed_training)
    dt = cfg.distributed_training
    assert (dt.distributed_init_method, dt.distributed_world_size, dt.distributed_rank, dt.device_id,
            dt.distributed_no_spawn) == ("env://", 4, 3, 0, True)
    cfg = _distributed_cfg(tiny_world, ["--distributed-world-size", "3"])
    with pytest.raises(ValueError, match="does not match torchrun's WORLD_SIZE=4"):
        du.infer_init_method(cfg.distributed_training)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU inference only")
def test_slurm_tasks_on_cpu_get_device_0(tiny_world, monkeypatch, tmp_path):
    from fairseq.distributed import utils as du

    scontrol = tmp_path / "scontrol"  # fairseq asks scontrol for the first host of the job
    scontrol.write_text("#!/bin/sh\necho node0\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    for k, v in {"SLURM_JOB_NODELIST": "node0", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "2",
                 "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(k, v)
    cfg = _distributed_cfg(tiny_world, ["--distributed-world-size", "2", "--distributed-port", "29400"])
    du.infer_init_method(cfg.distributed_training)  # stock fairseq: torch.cuda.set_device(1) fails here
    dt = cfg.distributed_training
    assert (dt.distributed_init_method, dt.distributed_rank, dt.device_id, dt.distributed_no_spawn) == \
        ("tcp://node0:29400", 1, 0, True)


def test_ddp_on_cpu_module_gets_no_device_ids(tmp_path):
    import torch.distributed as dist
    from fairseq.models import distributed_fairseq_model as dfm

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        ddp = dfm.DistributedDataParallel(torch.nn.Linear(2, 2), device_ids=[0], output_device=0)
        assert ddp.device_ids is None
    finally:
        dist.destroy_process_group()


def test_bf16_on_the_command_line_is_not_tpu(tiny_world):
    from m3p_fairseq.distributed import _bf16_without_tpu

    cfg = _distributed_cfg(tiny_world, ["--bf16"])
    assert cfg.common.tpu  # fairseq's option handling: --bf16 implies --tpu
    _bf16_without_tpu(cfg)
    assert cfg.common.bf16 and not cfg.common.tpu and not cfg.distributed_training.tpu


@pytest.mark.parametrize("flag", ["--bf16", "--memory-efficient-fp16"])
def test_mixed_precision_trains_from_the_command_line(tiny_world, tmp_path, flag):
    # the CPU has no fp16/bf16 speed to offer: this checks the paths through fairseq's optimizers run
    # (plain --fp16 flattens its fp32 copy on torch.cuda.current_device() and needs a GPU)
    res = run([os.path.join(BIN, "fairseq-train"),
               *_train_args(tiny_world["data"], str(tmp_path / "ck"), 4, [flag])], timeout=300)
    out = res.stdout + res.stderr
    recs = _updates(res)
    assert sorted(recs) == [1, 2, 3, 4], out[-3000:]
    assert all(math.isfinite(float(r["loss"])) for r in recs.values())
    if flag == "--bf16":
        assert "--bf16 without torch_xla" in out
    else:
        # fp16: no overflow (a zero region vector once made NaN in fp16), so the loss scale never drops
        assert "overflow" not in out and float(recs[4]["loss_scale"]) >= 128, out[-3000:]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_zero_regions_stay_finite_in_half_precision(dtype):
    # padding and MRM-zeroed regions are zero vectors; normalizing them in fp16 once gave 0/0 = NaN,
    # which attention then spread to every position of the sequence
    from m3p_fairseq.models.m3p import RegionEmbedding

    emb = RegionEmbedding(32, 16).to(dtype)
    feats = torch.zeros(2, 3, 32, dtype=dtype)
    feats[0, 0] = 1.0
    out = emb(feats, torch.zeros(2, 3, 5, dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()


def _children(pid):
    """{rank: pid} of the processes torchrun started (its direct children, RANK in their environment)."""
    ranks = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except (OSError, ValueError, IndexError):
            continue  # not a process, or one that ended meanwhile
        if b"RANK" in env:
            ranks[int(env[b"RANK"])] = int(entry)
    return ranks


def _log_updates(text):
    return [int(json.loads(line[line.index("{"):])["num_updates"]) for line in text.splitlines()
            if "| train_inner |" in line and "{" in line]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's workers through /proc")
def test_torchrun_restarts_after_losing_a_worker_and_resumes_exactly(tiny_world, tmp_path):
    """A worker SIGKILLed mid-run; torchrun --max-restarts 1 starts the group again, which resumes from
    the last checkpoint and logs the losses of an uninterrupted 2-worker run."""
    import time

    updates, every = 12, 4

    def cmd(save, *launcher):
        return [os.path.join(BIN, "torchrun"), "--standalone", "--nproc_per_node", "2", *launcher, "-m",
                "fairseq_cli.train", *_train_args(tiny_world["data"], save, updates, [
                    "--distributed-backend", "gloo", "--save-interval-updates", str(every),
                    "--no-epoch-checkpoints"])]

    def without_no_save(c):
        return [a for a in c if a != "--no-save"]

    whole = _run_group(without_no_save(cmd(str(tmp_path / "whole"))))
    reference = {u: r["loss"] for u, r in _updates(whole).items()}
    assert sorted(reference) == list(range(1, updates + 1))

    log_path = tmp_path / "restarted.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1",
               PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(without_no_save(cmd(str(tmp_path / "restarted"), "--max-restarts", "1",
                                                    "--monitor-interval", "0.5")),
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and max(_log_updates(log_path.read_text()) or [0]) < every + 2:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.05)
            workers = _children(proc.pid)
            assert sorted(workers) == [0, 1], workers
            os.kill(workers[1], signal.SIGKILL)  # rank 1 lost, between checkpoints 4 and 8
            killed_at = max(_log_updates(log_path.read_text()))
            assert proc.wait(timeout=300) == 0, log_path.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                _stop_launcher(proc)
    text = log_path.read_text()
    # the second attempt begins where it loads the checkpoint; everything after is the resumed run
    resumed_text = text[text.rindex("Loaded checkpoint"):]
    assert "checkpoint_last.pt (epoch 1 @ 4 updates)" in resumed_text.splitlines()[0], resumed_text[:500]
    resumed = {int(r["num_updates"]): r["loss"] for r in _updates(subprocess.CompletedProcess(
        [], 0, resumed_text, "")).values()}
    assert sorted(resumed) == list(range(every + 1, updates + 1)), (killed_at, sorted(resumed))
    assert killed_at < 2 * every, killed_at
    for u in resumed:
        assert resumed[u] == reference[u], (u, resumed[u], reference[u])


def test_zero_sharding_with_checkpointing_trains_saves_and_resumes_exactly(tiny_world, tmp_path):
    """--zero-sharding os (fairseq's: fairscale's OSS, each worker keeps the Adam state of its share of the
    parameters and the checkpoint gets them all) and --checkpoint-activations over 2 CPU workers; a second
    run started from the checkpoint of update 2 logs the losses of the uninterrupted run, exactly."""
    import shutil

    updates, every = 4, 2

    def cmd(save):
        args = _train_args(tiny_world["data"], save, updates, [
            "--distributed-backend", "gloo", "--zero-sharding", "os", "--checkpoint-activations",
            "--save-interval-updates", str(every), "--no-epoch-checkpoints"])
        return [os.path.join(BIN, "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "fairseq_cli.train",
                *[a for a in args if a != "--no-save"]]

    whole = _run_group(cmd(str(tmp_path / "whole")))
    # the default DDP cannot follow fairseq's reentrant checkpoints with M3P's unused parameters
    assert "--checkpoint-activations: --ddp-backend legacy_ddp" in whole.stdout + whole.stderr
    reference = {u: r["loss"] for u, r in _updates(whole).items()}
    assert sorted(reference) == list(range(1, updates + 1))
    saved = torch.load(tmp_path / "whole" / f"checkpoint_1_{every}.pt", weights_only=False)
    state, params = saved["last_optimizer_state"], [k for k in saved["model"] if not k.endswith(".version")]
    # consolidated from both workers' shards: Adam's moments for every parameter (one is a shared weight)
    assert len(state["state"]) == len(state["param_groups"][0]["params"]) == len(params) - 1

    (tmp_path / "resumed").mkdir()
    shutil.copy(tmp_path / "whole" / f"checkpoint_1_{every}.pt", tmp_path / "resumed" / "checkpoint_last.pt")
    resumed = _run_group(cmd(str(tmp_path / "resumed")))
    assert f"checkpoint_last.pt (epoch 1 @ {every} updates)" in resumed.stdout + resumed.stderr
    again = {u: r["loss"] for u, r in _updates(resumed).items()}
    assert sorted(again) == list(range(every + 1, updates + 1))
    for u in again:
        assert again[u] == reference[u], (u, again[u], reference[u])
