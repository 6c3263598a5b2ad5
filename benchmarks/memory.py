"""Peak memory of pre-training: fairseq-train itself, run in this process for a few updates on the
benchmark data folder, at the paper's shape by default.

Shapes (``--shape``): ``paper`` = MMLM batches of 128-token text (captions lengthened to 126
pieces) + 36 regions of 2048-d features, the step of benchmarks/train_step.py, where activations
outweigh weights and optimizer state; ``world`` = the four objectives on the embedded world's short
captions (what the previous version of this script measured).

Prints the process's peak resident memory (and, on a GPU, torch's peak allocated and reserved
memory), the resident memory before training started (Python, torch, fairseq), and the model's
parameter count with what fp32 weights + gradients + Adam's two moments take. ``--grid`` runs the
README's table, each setting in a process of its own (peak memory is per process): base and large,
without and with ``--checkpoint-activations``, in fp32, ``--memory-efficient-bf16`` and
``--memory-efficient-fp16``.

    python benchmarks/memory.py                                   # m3p_base, paper shape, CPU fp32
    python benchmarks/memory.py --arch m3p_large -- --checkpoint-activations   # after --: fairseq-train's
    python benchmarks/memory.py --grid --batch 16                 # the README's table (CPU: ~20 min)
"""
import argparse
import itertools
import json
import logging
import os
import re
import subprocess
import sys
import tempfile

import torch

from _common import ROOT, emit, peak_rss_mb, set_threads
from _world import bench_data

SHAPES = {"paper": dict(objectives="mmlm", caption_pieces=126),
          "world": dict(objectives="xmlm,mmlm,mrm,vlm", caption_pieces=None)}
GRID_ARCHS = ("m3p_base", "m3p_large")
GRID_MEMORY = ((), ("--checkpoint-activations",))
# bf16 on the command line implies --tpu in fairseq (the plugin turns that back when torch_xla is absent)
GRID_PRECISION = ((), ("--memory-efficient-bf16",), ("--memory-efficient-fp16",))


def grid(a, passthrough):
    """Every setting of the README's table in a process of its own; one JSON line each."""
    for arch, memory, precision in itertools.product(GRID_ARCHS, GRID_MEMORY, GRID_PRECISION):
        cmd = [sys.executable, os.path.abspath(__file__), "--arch", arch, "--shape", a.shape, "--batch", str(a.batch),
               "--updates", str(a.updates), "--threads", str(a.threads), "--data", a.data, "--",
               *memory, *precision, *passthrough]
        res = subprocess.run(cmd, cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True, text=True)
        lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
        if res.returncode or not lines:
            emit({"benchmark": "memory", "arch": arch, "extra_args": " ".join(memory + precision),
                  "error": (res.stderr.strip().splitlines() or ["no output"])[-1]})
        else:
            print(lines[-1], flush=True)


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="benchmark data folder (default: $TMPDIR/m3p-bench-world[-long])")
    p.add_argument("--shape", choices=sorted(SHAPES), default="paper")
    p.add_argument("--regions", type=int, default=36)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--updates", type=int, default=2, help="the second update is the first with Adam's state")
    p.add_argument("--arch", default="m3p_base")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--grid", action="store_true", help="the README's table, one process per setting")
    a = p.parse_args(argv)
    shape = SHAPES[a.shape]
    suffix = "-long" if shape["caption_pieces"] else ""
    a.data = a.data or os.path.join(tempfile.gettempdir(), "m3p-bench-world" + suffix)
    threads = set_threads(a.threads)
    data = bench_data(a.data, regions=a.regions, caption_pieces=shape["caption_pieces"])
    if a.grid:
        return grid(a, extra)
    save = tempfile.mkdtemp(prefix="m3p-mem-")
    cuda = torch.cuda.is_available() and "--cpu" not in extra
    sys.argv = ["fairseq-train", data, "--user-dir", os.path.join(ROOT, "m3p_fairseq"),
                "--task", "multitask_multimodal", "--arch", a.arch, "--criterion", "m3p_pretrain",
                "--objectives", shape["objectives"], "--max-regions", str(max(a.regions, 100)),
                "--optimizer", "adam", "--lr", "1e-4", "--max-update", str(a.updates), "--batch-size", str(a.batch),
                "--num-workers", "0", "--save-dir", save, "--no-save", "--disable-validation",
                "--log-format", "json", "--log-interval", "1", *([] if cuda else ["--cpu"]), *extra]
    from fairseq_cli.train import cli_main

    import m3p_fairseq  # noqa: F401

    before = peak_rss_mb()  # Python, torch, fairseq and the plugin loaded; nothing built yet
    seen = {"updates": []}

    class Log(logging.Handler):
        """fairseq-train logs the model's size and each update's batch: read them there."""

        def emit(self, record):
            msg = record.getMessage()
            m = re.match(r"num\. shared model params: ([\d,]+)", msg)
            if m:
                seen["params"] = int(m.group(1).replace(",", ""))
            if msg.startswith("{") and '"num_updates"' in msg:
                seen["updates"].append(json.loads(msg))

    handler = Log()
    logging.getLogger().addHandler(handler)
    try:
        cli_main()
    finally:
        logging.getLogger().removeHandler(handler)
    n = seen.get("params", 0)
    last = seen["updates"][-1] if seen["updates"] else {}
    rec = {"benchmark": "memory", "device": "cuda" if cuda else "cpu", "threads": threads, "arch": a.arch,
           "shape": a.shape, "objectives": shape["objectives"], "batch": a.batch, "regions_per_image": a.regions,
           "text_tokens_per_batch": float(last.get("wpb", 0)), "updates": a.updates, "extra_args": " ".join(extra),
           "params_m": round(n / 1e6, 2), "fp32_weights_grads_adam_mb": round(n * 4 * 4 / 2**20, 1),
           "rss_before_training_mb": round(before, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
           # the last update's wall-clock seconds (the logged ups is rounded to 2 decimals)
           "seconds_per_update": (float(last["wall"]) - float(seen["updates"][-2]["wall"])
                                  if len(seen["updates"]) > 1 else None)}
    if cuda:
        rec["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        rec["cuda_peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    emit(rec)


if __name__ == "__main__":
    main()
