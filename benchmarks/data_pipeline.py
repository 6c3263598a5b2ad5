"""Samples/s of the multitask pre-training iterator in one worker (HDF5 region reads, masking,
negatives, collation) against what the base model consumes in a training step.

Runs the task exactly as fairseq-train builds it (load_dataset, get_batch_iterator with
num_workers=0, so the timed loop is one data-loader worker's work) on a benchmark data folder:
the embedded world's text and captions with 2048-d regions, --regions per image.

    python benchmarks/data_pipeline.py         # prints one JSON line
"""
import argparse
import os
import statistics
import tempfile
import time

import torch

from _common import emit, set_threads
from _world import bench_data


def build_task(data, objectives, batch, max_regions):
    import m3p_fairseq  # noqa: F401
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        data, "--task", "multitask_multimodal", "--arch", "m3p_base", "--criterion", "m3p_pretrain", "--cpu",
        "--objectives", objectives, "--batch-size", str(batch), "--max-regions", str(max_regions)])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    return task, cfg


def time_iterator(task, batch, max_batches, seed=1):
    itr = task.get_batch_iterator(task.dataset("train"), max_sentences=batch, seed=seed, num_workers=0,
                                  epoch=1).next_epoch_itr(shuffle=True)
    per_objective, samples, t_all = {}, 0, 0.0
    it = iter(itr)
    for _ in range(max_batches):
        t0 = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            break
        dt = time.perf_counter() - t0
        t_all += dt
        samples += b["nsentences"]
        rec = per_objective.setdefault(b["objective"], [0, 0.0])
        rec[0] += b["nsentences"]
        rec[1] += dt
    return samples / t_all, {k: round(n / t, 1) for k, (n, t) in per_objective.items()}, samples


def model_samples_per_s(task, cfg, batch, steps):
    """The base model's training consumption (MMLM step: forward, backward, Adam) on a real batch
    of ``task``, built with MMLM as its only objective."""
    model = task.build_model(cfg.model)
    crit = task.build_criterion(cfg.criterion)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    itr = task.get_batch_iterator(task.dataset("train"), max_sentences=batch, seed=1).next_epoch_itr(shuffle=True)
    sample = next(b for b in itr if b["objective"] == "mmlm")
    model.train()
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _, _ = crit(model, sample)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return sample["nsentences"] / statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "m3p-bench-world"),
                   help="benchmark data folder (built on first use)")
    p.add_argument("--regions", type=int, default=36, help="regions per image in the benchmark store")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=200, help="batches timed")
    p.add_argument("--model-steps", type=int, default=1, help="timed base-model steps (0: skip the model)")
    p.add_argument("--model-samples-per-s", type=float, default=None,
                   help="use this consumption instead of measuring it (e.g. a GPU's, from gpu_check.sh)")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    threads = set_threads(a.threads)
    data = bench_data(a.data, regions=a.regions)
    task, cfg = build_task(data, "xmlm,mmlm,mrm,vlm", a.batch, max(a.regions, 100))
    # one thread, as torch's DataLoader gives each worker: with more, every small tensor op of
    # masking and collation pays OpenMP's start-up, and on a busy machine that was 10x slower
    torch.set_num_threads(1)
    rate, per_obj, n = time_iterator(task, a.batch, a.batches)
    torch.set_num_threads(threads)
    consume = a.model_samples_per_s
    if consume is None and a.model_steps > 0:
        mtask, mcfg = build_task(data, "mmlm", a.batch, max(a.regions, 100))
        consume = model_samples_per_s(mtask, mcfg, a.batch, a.model_steps)
    emit({
        "benchmark": "data_pipeline", "threads": threads, "regions_per_image": a.regions, "feat_dim": 2048,
        "batch": a.batch, "samples_timed": n, "samples_per_s_per_worker": round(rate, 1),
        "per_objective_samples_per_s": per_obj,
        "model_samples_per_s": round(consume, 3) if consume else None,
        "ratio_vs_model": round(rate / consume, 1) if consume else None,
    })


if __name__ == "__main__":
    main()
