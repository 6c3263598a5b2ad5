"""Two-stage retrieval: the dual encoder shortlists, the cross-encoder re-ranks.

Stage 1 embeds every caption (text alone) and every image (regions alone) once with the same
encoder and its dual-encoder heads (``models/dual_encoder.py``) and keeps, for every image, its
top-k captions and, for every caption, its top-k images. Stage 2 scores only those pairs with
the cross-encoder, through ``retrieval.score_pairs`` with an explicit pair list, so it is batched
and shardable exactly as full scoring is, and ``merge_shards`` puts the shards back together.

The final matrix ranks every re-ranked pair above every pair the shortlist dropped, which keep
their dual-encoder order: recall is then computed on it as on a full matrix. The cost is the number
of cross-encoded pairs (at most k x (images + captions)) against images x captions.
"""
import numpy as np
import torch
from fairseq.data import data_utils

from ..data.region_dataset import collate_regions
from ..models.dual_encoder import embed_images, embed_text
from .retrieval import merge_shards, score_pairs


@torch.no_grad()
def dual_scores(model, captions, images, pad_idx, bos_idx, batch_size=256, device="cpu"):
    """(n_images, n_captions) dot products of the dual encoder's unit embeddings."""
    model.eval()
    text = []
    for s in range(0, len(captions), batch_size):
        src = data_utils.collate_tokens(captions[s:s + batch_size], pad_idx, left_pad=False)
        text.append(embed_text(model, src.to(device)).cpu())
    image = []
    for s in range(0, len(images), batch_size):
        r = collate_regions(images[s:s + batch_size])
        image.append(embed_images(model, r["regions"].to(device), r["region_boxes"].to(device),
                                  r["region_padding_mask"].to(device), bos_idx).cpu())
    return (torch.cat(image) @ torch.cat(text).t()).double().numpy()


def shortlist(scores, k):
    """(P, 2) array of (image, caption) pairs, image-major order: each image's top-k captions and
    each caption's top-k images under ``scores`` (ties broken by index, so every shard agrees)."""
    n_img, n_cap = scores.shape
    keep = np.zeros((n_img, n_cap), dtype=bool)
    top_caps = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, n_cap)]
    keep[np.arange(n_img)[:, None], top_caps] = True
    top_imgs = np.argsort(-scores, axis=0, kind="stable")[: min(k, n_img), :]
    keep[top_imgs, np.arange(n_cap)[None, :]] = True
    return np.argwhere(keep)


def combine(dual, cross, scored):
    """One matrix for recall: re-ranked pairs keep their cross-encoder scores, lifted above every
    other pair, which keep their dual-encoder order below."""
    dual = np.asarray(dual, dtype=np.float64)
    out = dual.copy()
    if scored.any():
        cross = np.asarray(cross, dtype=np.float64)
        lift = dual.max() - cross[scored].min() + 1.0
        out[scored] = cross[scored] + lift
    return out


def two_stage_scores(model, captions, images, pad_idx, bos_idx, k=10, batch_size=256, num_shards=1, shard_id=0,
                     device="cpu", progress=None, dual=None):
    """Stage 1 and this shard's part of stage 2.

    Returns (dual, pairs, (pair_ids, scores)): the dual-encoder matrix, the shortlist, and this
    shard's cross-encoder scores (merge them with ``merge_two_stage``)."""
    if dual is None:
        dual = dual_scores(model, captions, images, pad_idx, bos_idx, batch_size, device)
    pairs = shortlist(dual, k)
    part = score_pairs(model, captions, images, pad_idx, batch_size, num_shards, shard_id, pairs=pairs,
                       progress=progress, device=device)
    return dual, pairs, part


def merge_two_stage(dual, pairs, parts):
    """Shards of stage 2 -> the final matrix; every shortlisted pair must have been scored once."""
    n_img, n_cap = dual.shape
    cross, seen = merge_shards(parts, n_img, n_cap)
    expected = np.zeros((n_img, n_cap), dtype=bool)
    expected[pairs[:, 0], pairs[:, 1]] = True
    if (seen != expected).any():
        raise ValueError(f"the shards scored {int(seen.sum())} pairs, the shortlist has {int(expected.sum())}")
    return combine(dual, cross, seen)
