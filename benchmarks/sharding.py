"""What each worker keeps, with and without fairseq's --zero-sharding os: fairseq-train itself under
torchrun, its Trainer's step wrapped to count, on every worker after each update, the bytes of the
model's parameters, their gradients, the optimizer's state held by that worker (for OSS, its own
shard) and fp32 master weights (fairseq's FP16Optimizer). One JSON line per worker.

    torchrun --nproc_per_node 2 benchmarks/sharding.py                          # m3p_base, ZeRO, CPU
    torchrun --nproc_per_node 2 benchmarks/sharding.py --zero none              # plain DDP, for comparison
    torchrun --nproc_per_node 2 benchmarks/sharding.py --arch m3p_tiny -- --fp16   # after --: fairseq-train's
"""
import argparse
import os
import sys
import tempfile
import time

import torch

from _common import ROOT, emit, set_threads
from _world import bench_data


def _bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def held(trainer):
    """Bytes this worker holds: parameters, gradients, optimizer state, fp32 master copy."""
    params = list(trainer.model.parameters())
    opt = trainer.optimizer
    inner = opt.optimizer  # torch's optimizer, or fairscale's OSS around it
    local = getattr(inner, "optim", inner)  # OSS keeps this worker's shard in a torch optimizer of its own
    state = [t for s in local.state.values() for t in s.values()]
    master = getattr(opt, "fp32_params", None)
    master = list(master.values()) if isinstance(master, dict) else ([master] if torch.is_tensor(master) else [])
    return {"params_mb": _bytes(params) / 2**20, "grads_mb": _bytes(p.grad for p in params) / 2**20,
            "optimizer_state_mb": _bytes(state) / 2**20, "fp32_master_mb": _bytes(master) / 2**20,
            "params_with_state": len(local.state), "params_total": len(params)}


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "m3p-bench-world"))
    p.add_argument("--arch", default="m3p_base")
    p.add_argument("--zero", default="os", choices=["os", "none"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--updates", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    set_threads(a.threads)
    rank = int(os.environ.get("RANK", 0))
    if rank != 0:  # the first worker builds the data folder, once; the others wait for its stamp
        deadline = time.time() + 900
        while not os.path.exists(os.path.join(a.data, "bench.json")) and time.time() < deadline:
            time.sleep(1)
    data = bench_data(a.data)
    from fairseq import trainer as fairseq_trainer
    from fairseq_cli.train import cli_main

    import m3p_fairseq  # noqa: F401

    step = fairseq_trainer.Trainer.train_step

    def counted(self, samples, raise_oom=False):
        out = step(self, samples, raise_oom)
        emit({"benchmark": "sharding", "rank": rank, "world_size": self.data_parallel_world_size, "arch": a.arch,
              "zero_sharding": a.zero, "extra_args": " ".join(extra), "update": self.get_num_updates(),
              **{k: round(v, 1) if isinstance(v, float) else v for k, v in held(self).items()}})
        return out

    fairseq_trainer.Trainer.train_step = counted
    cuda = torch.cuda.is_available() and "--cpu" not in extra
    sys.argv = ["fairseq-train", data, "--user-dir", os.path.join(ROOT, "m3p_fairseq"),
                "--task", "multitask_multimodal", "--arch", a.arch, "--criterion", "m3p_pretrain",
                "--optimizer", "adam", "--lr", "1e-4", "--max-update", str(a.updates), "--batch-size", str(a.batch),
                "--num-workers", "0", "--save-dir", tempfile.mkdtemp(prefix="m3p-shard-"), "--no-save",
                "--disable-validation", "--zero-sharding", a.zero, *([] if cuda else ["--cpu"]), *extra]
    cli_main()


if __name__ == "__main__":
    main()
