"""Peak memory of pre-training at base size (m3p_base, batch 8): fairseq-train itself, run in this
process on the benchmark data folder for a few updates of the four objectives.

Prints the process's peak resident memory (and, on a GPU, torch's peak allocated and reserved
memory), the resident memory before training started (Python, torch, fairseq), and the model's
parameter count with what fp32 weights + gradients + Adam's two moments take.

    python benchmarks/memory.py                # CPU, fp32
    python benchmarks/memory.py -- --fp16      # anything after -- goes to fairseq-train (on a GPU)
"""
import argparse
import logging
import os
import re
import sys
import tempfile

import torch

from _common import ROOT, emit, peak_rss_mb, set_threads
from _world import bench_data


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "m3p-bench-world"))
    p.add_argument("--regions", type=int, default=36)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--updates", type=int, default=4)
    p.add_argument("--arch", default="m3p_base")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    threads = set_threads(a.threads)
    data = bench_data(a.data, regions=a.regions)
    save = tempfile.mkdtemp(prefix="m3p-mem-")
    cuda = torch.cuda.is_available() and "--cpu" not in extra
    sys.argv = ["fairseq-train", data, "--user-dir", os.path.join(ROOT, "m3p_fairseq"),
                "--task", "multitask_multimodal", "--arch", a.arch, "--criterion", "m3p_pretrain",
                "--objective-ratios", "1,1,1,1", "--max-regions", str(max(a.regions, 100)),
                "--optimizer", "adam", "--lr", "1e-4", "--max-update", str(a.updates), "--batch-size", str(a.batch),
                "--num-workers", "0", "--save-dir", save, "--no-save", "--disable-validation",
                "--log-format", "json", "--log-interval", "1", *([] if cuda else ["--cpu"]), *extra]
    from fairseq_cli.train import cli_main

    import m3p_fairseq  # noqa: F401

    before = peak_rss_mb()  # Python, torch, fairseq and the plugin loaded; nothing built yet
    params = {}

    class ParamCount(logging.Handler):
        """fairseq-train logs the model's size; read it there rather than build a second model."""

        def emit(self, record):
            m = re.match(r"num\. shared model params: ([\d,]+)", record.getMessage())
            if m:
                params["n"] = int(m.group(1).replace(",", ""))

    handler = ParamCount()
    logging.getLogger("fairseq_cli.train").addHandler(handler)
    try:
        cli_main()
    finally:
        logging.getLogger("fairseq_cli.train").removeHandler(handler)
    rec = {"benchmark": "memory", "device": "cuda" if cuda else "cpu", "threads": threads, "arch": a.arch,
           "batch": a.batch, "regions_per_image": a.regions, "updates": a.updates, "extra_args": " ".join(extra),
           "params_m": round(params.get("n", 0) / 1e6, 2),
           "fp32_weights_grads_adam_mb": round(params.get("n", 0) * 4 * 4 / 2**20, 1),
           "rss_before_training_mb": round(before, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
    if cuda:
        rec["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        rec["cuda_peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    emit(rec)


if __name__ == "__main__":
    main()
