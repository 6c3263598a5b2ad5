"""m3p-retrieval-eval: cross-encoder retrieval recall of a checkpoint, per language.

    m3p-retrieval-eval DATA --path checkpoints/checkpoint_last.pt --split test --langs en,de,fr \\
        --results demo-output/results.json --key retrieval.zero_shot

Scores every (image, caption) pair of the split with the VLM head, prints R@1/5/10 both ways and
mR per language, and merges them (with the chance level) into the results JSON under ``--key``.
With ``--num-shards N --shard-id K --scores-out F`` it scores one shard of the pairs and saves
them; ``--merge F1 F2 ...`` then computes recall from the merged, exact matrix.
"""
import argparse
import logging
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from .results import update_results
from .retrieval import chance_recall, merge_shards, recall_at_k, recall_line, save_shard_scores, score_pairs


def load_checkpoint(path, data, overrides=None):
    import m3p_fairseq  # noqa: F401  (registers tasks/models and the checkpoint allowlist)
    from fairseq import checkpoint_utils

    from ..errors import M3PInputError

    if not os.path.isfile(path):
        raise SystemExit(f"m3p-retrieval-eval: {path}: checkpoint not found")
    try:
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
            [path], arg_overrides={"data": data, **(overrides or {})})
    except M3PInputError as e:  # a refused checkpoint: its one line names the file already
        raise SystemExit(f"m3p-retrieval-eval: {e}")
    except Exception as e:  # truncated or foreign files raise many kinds of errors
        raise SystemExit(f"m3p-retrieval-eval: {path}: cannot load checkpoint ({e.__class__.__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})")
    model = models[0]
    if not hasattr(model, "encoder") or not hasattr(model.encoder, "region_embed") or hasattr(model, "decoder"):
        raise SystemExit(f"m3p-retrieval-eval: {path}: not an M3P understanding model "
                         f"({model.__class__.__name__}); retrieval needs the VLM head")
    return model, task


def language_split(task, lang, split):
    """Captions (token tensors), their image index, and the distinct images (region dicts)."""
    captions, rows = task.load_captions(lang, split)
    regions = task.region_dataset(split)
    uniq, caption_image = np.unique(rows, return_inverse=True)
    images = [regions.get_row(int(r)) for r in uniq]
    return [captions[i] for i in range(len(captions))], caption_image, images


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data")
    p.add_argument("--path", required=True, help="checkpoint of the understanding model")
    p.add_argument("--split", default="test")
    p.add_argument("--langs", default="en")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--max-images", type=int, default=None, help="evaluate on the first N images only")
    p.add_argument("--results", help="results JSON to update")
    p.add_argument("--key", default="retrieval.zero_shot", help="dotted key under which to store the metrics")
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--shard-id", type=int, default=0)
    p.add_argument("--scores-out", help="with sharding: save this shard's pair scores (.npz)")
    p.add_argument("--merge", nargs="+", help="shard files to merge instead of scoring")
    p.add_argument("--cpu", action="store_true", help="score on the CPU even when CUDA is there")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)  # fairseq and h5py log at INFO/DEBUG on import
    langs = [x for x in a.langs.split(",") if x]
    device = "cuda" if torch.cuda.is_available() and not a.cpu else "cpu"
    model, task = load_checkpoint(a.path, a.data, {"caption_langs": a.langs})
    model.to(device)
    pad = task.source_dictionary.pad()
    metrics, chance = {}, None
    shard_out = {}
    for lang in langs:
        try:
            captions, caption_image, images = language_split(task, lang, a.split)
        except ValueError as e:
            raise SystemExit(f"m3p-retrieval-eval: {e}")
        if a.max_images:
            keep = caption_image < a.max_images
            captions = [c for c, k in zip(captions, keep) if k]
            caption_image, images = caption_image[keep], images[: a.max_images]
        if a.merge:
            parts = []
            for f in a.merge:
                z = np.load(f)
                parts.append((z[f"{lang}_ids"], z[f"{lang}_scores"]))
            matrix, seen = merge_shards(parts, len(images), len(captions))
            if not seen.all():
                raise SystemExit(f"m3p-retrieval-eval: shards {' '.join(a.merge)} miss {int((~seen).sum())} pairs of {lang}")
        else:
            bar = (lambda x: tqdm(x, desc=f"score {lang}", file=sys.stderr, mininterval=2))
            ids, scores = score_pairs(model, captions, images, pad, a.batch_size, a.num_shards, a.shard_id,
                                      progress=bar, device=device)
            if a.num_shards > 1:
                shard_out[f"{lang}_ids"], shard_out[f"{lang}_scores"] = ids, scores
                continue
            matrix, _ = merge_shards([(ids, scores)], len(images), len(captions))
        m = recall_at_k(matrix, caption_image)
        m["num_images"], m["num_captions"] = len(images), len(captions)
        metrics[lang] = m
        chance = chance_recall(caption_image, len(images))["mR"]
        print(recall_line(lang, m, chance))
    if shard_out:
        try:
            save_shard_scores(a.scores_out, shard_out)
        except ValueError as e:
            raise SystemExit(f"m3p-retrieval-eval: {e}")
        print(a.scores_out)
        return
    if a.results:
        update_results(a.results, a.key, metrics)
        parent = a.key.rsplit(".", 1)[0] if "." in a.key else a.key
        update_results(a.results, parent + ".chance_mR", chance)


if __name__ == "__main__":
    main()
