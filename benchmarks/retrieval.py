"""Cross-encoded (image, caption) pairs per second when scoring the full matrix, and, where the
two-stage retrieval of ``evaluation/two_stage.py`` is present, its pair count and time on the same
inputs (its mR against full scoring only with a fine-tuned ``--checkpoint``: a random model's
rankings are chance either way).

Without a checkpoint the model is m3p_base at its initialization (speed does not depend on the
weights) on the benchmark data folder (2048-d features, --regions per image).

    python benchmarks/retrieval.py             # prints one JSON line
"""
import argparse
import os
import tempfile
import time

import numpy as np
import torch

from _common import emit, set_threads
from _world import bench_data


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "m3p-bench-world"))
    p.add_argument("--regions", type=int, default=36)
    p.add_argument("--images", type=int, default=16, help="first N test images, with all their captions")
    p.add_argument("--batch", type=int, default=64, help="pairs per forward pass")
    p.add_argument("--k", type=int, default=2, help="two-stage shortlist size per image and per caption")
    p.add_argument("--checkpoint", default=None, help="fine-tuned understanding model (mR of both methods)")
    p.add_argument("--lang", default="en")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    threads = set_threads(a.threads)

    import m3p_fairseq  # noqa: F401
    from m3p_fairseq.checkpoints import UNDERSTANDING, load_model_of_kind
    from m3p_fairseq.evaluation.retrieval import language_split, recall_at_k, score_pairs

    if a.checkpoint:
        model, task = load_model_of_kind(a.checkpoint, a.data, UNDERSTANDING, "the retrieval benchmark")
    else:
        from data_pipeline import build_task

        task, cfg = build_task(bench_data(a.data, regions=a.regions), "vlm", a.batch, max(a.regions, 100))
        model = task.build_model(cfg.model)
    model.eval()
    captions, caption_image, images = language_split(task, a.lang, "test")
    keep = np.nonzero(caption_image < a.images)[0]
    captions, caption_image, images = [captions[i] for i in keep], caption_image[keep], images[: a.images]
    pad, bos = task.source_dictionary.pad(), task.source_dictionary.bos()

    n_pairs = len(images) * len(captions)
    t0 = time.perf_counter()
    pair_ids, scores = score_pairs(model, captions, images, pad, batch_size=a.batch)
    full_s = time.perf_counter() - t0
    full = np.empty(n_pairs, dtype=np.float32)
    full[pair_ids] = scores
    full = full.reshape(len(images), len(captions))
    rec = {"benchmark": "retrieval", "threads": threads, "images": len(images), "captions": len(captions),
           "regions_per_image": int(max(len(im["features"]) for im in images)), "batch": a.batch,
           "full_pairs": n_pairs, "full_s": round(full_s, 2), "full_pairs_per_s": round(n_pairs / full_s, 2)}
    if a.checkpoint:
        rec["full_mR"] = round(recall_at_k(full, caption_image)["mR"], 2)

    try:
        from m3p_fairseq.evaluation import two_stage
        from m3p_fairseq.models.dual_encoder import add_dual_heads, has_dual_heads
    except ImportError:
        two_stage = None
    if two_stage is not None:
        if not has_dual_heads(model):
            if a.checkpoint:
                raise SystemExit(f"{a.checkpoint}: no dual-encoder heads; two-stage retrieval needs them")
            add_dual_heads(model, model.encoder.sentence_encoder.layers[0].embed_dim)
        t0 = time.perf_counter()
        dual, pairs, part = two_stage.two_stage_scores(model, captions, images, pad, bos, k=a.k, batch_size=a.batch)
        rec.update({"two_stage_k": a.k, "two_stage_pairs": int(len(pairs)),
                    "two_stage_s": round(time.perf_counter() - t0, 2),
                    "pair_reduction": round(n_pairs / max(len(pairs), 1), 2)})
        if a.checkpoint:
            final = two_stage.merge_two_stage(dual, pairs, [part])
            final = final[0] if isinstance(final, tuple) else final
            rec["two_stage_mR"] = round(recall_at_k(final, caption_image)["mR"], 2)
    emit(rec)


if __name__ == "__main__":
    with torch.no_grad():
        main()
