"""Image-text retrieval by the cross-encoder: score every (image, caption) pair, then recall.

Scoring is batched over pairs and shardable: shard k of n scores a contiguous block of the
flattened N_images x N_captions pair list and returns (pair indices, scores); ``merge_shards``
puts them back into one matrix exactly, so recall is computed once on the full matrix (not per
shard and averaged, which is wrong).
"""
import math
from typing import NamedTuple, Optional

import numpy as np
import torch

from ..data.region_dataset import collate_regions
from ..errors import M3PInputError

RECALL_KS = (1, 5, 10)  # R@1/5/10 both ways, whose mean is mR


def i2t_best_ranks(scores, caption_image, image_index):
    """Image -> text: for each row of ``scores`` (image ``image_index[r]`` against every caption), the best
    rank (0 = top) of the image's own captions; ties go to the earlier caption (a stable sort)."""
    scores = np.asarray(scores, dtype=np.float64)
    n_rows, n_cap = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    rank_pos = np.empty_like(order)
    rank_pos[np.arange(n_rows)[:, None], order] = np.arange(n_cap)[None, :]
    own = np.asarray(caption_image)[None, :] == np.asarray(image_index)[:, None]
    return np.where(own, rank_pos, n_cap).min(axis=1)


def t2i_ranks(scores, true_image):
    """Text -> image: for each column of ``scores`` (a caption against every image), the rank of its true image
    ``true_image[c]``: how many images score strictly higher (ties count for the caption)."""
    scores = np.asarray(scores, dtype=np.float64)
    true = scores[np.asarray(true_image), np.arange(scores.shape[1])]
    return (scores > true[None, :]).sum(axis=0)


def recall_from_ranks(i2t, t2i, ks=RECALL_KS):
    """R@K (percent) of image -> text and text -> image ranks, and their mean mR."""
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * float(np.mean(np.asarray(i2t) < k))
        out[f"t2i_r{k}"] = 100.0 * float(np.mean(np.asarray(t2i) < k))
    out["mR"] = float(np.mean([out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks]))
    return out


def recall_at_k(scores, caption_image, ks=RECALL_KS):
    """R@K in both directions and their mean (in percent).

    scores: (n_images, n_captions) array, higher is better.
    caption_image: (n_captions,) index of each caption's image.
    Image -> text counts a hit when any of the image's captions is in the top K (images without a
    caption are left out). Validation computes the same ranks one query at a time (evaluation/validation.py).
    """
    scores = np.asarray(scores, dtype=np.float64)
    caption_image = np.asarray(caption_image)
    has_caption = np.nonzero(np.bincount(caption_image, minlength=scores.shape[0]) > 0)[0]
    return recall_from_ranks(i2t_best_ranks(scores[has_caption], caption_image, has_caption),
                             t2i_ranks(scores, caption_image), ks)


def chance_recall(caption_image, n_images, ks=RECALL_KS):
    """Expected recall of a random ranking (percent), same keys as recall_at_k."""
    caption_image = np.asarray(caption_image)
    n_cap = len(caption_image)
    per_image = np.bincount(caption_image, minlength=n_images)
    per_image = per_image[per_image > 0]
    out = {}
    for k in ks:
        kk = min(k, n_cap)
        # P(none of c captions in the top K of n_cap) = C(n_cap - c, K) / C(n_cap, K)
        miss = np.array([math.comb(n_cap - c, kk) / math.comb(n_cap, kk) for c in per_image])
        out[f"i2t_r{k}"] = 100.0 * float(np.mean(1 - miss))
        out[f"t2i_r{k}"] = 100.0 * min(k, n_images) / n_images
    out["mR"] = float(np.mean([out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks]))
    return out


def shard_range(n_pairs, num_shards, shard_id):
    per = int(math.ceil(n_pairs / num_shards))
    return min(shard_id * per, n_pairs), min((shard_id + 1) * per, n_pairs)


class PairScorer:
    """The cross-encoder's match logits for any (image, caption) pairs of one caption set and one image set,
    padded once and scored in batches of ``batch_size`` pairs (each batch cut to its longest text and image).

    captions: list of 1-d LongTensors; images: list of region dicts (RegionDataset items).
    contexts: optional list, per image, of a 1-d LongTensor appended to the caption of each of its
        pairs (MILD: ``</s> context </s>``, the image's context text fed with it).
    """

    def __init__(self, captions, images, pad_idx, contexts=None):
        from fairseq.data import data_utils

        self.captions, self.contexts, self.pad_idx = captions, contexts, pad_idx
        self.text = data_utils.collate_tokens(captions, pad_idx, left_pad=False)
        self.regions = collate_regions(images)

    @torch.no_grad()
    def __call__(self, model, img_idx, cap_idx, batch_size=256, device="cpu", progress=None):
        """Scores (float32) of the pairs (img_idx[p], cap_idx[p])."""
        from fairseq.data import data_utils

        img_idx, cap_idx = np.asarray(img_idx, dtype=np.int64), np.asarray(cap_idx, dtype=np.int64)
        pad_idx, regions = self.pad_idx, self.regions
        # regions in the model's float type (half in fp16 training, whose validation scores with it)
        dtype = next((p.dtype for p in model.parameters()), torch.float32) if hasattr(model, "parameters") \
            else torch.float32
        model.eval()
        scores = np.empty(len(img_idx), dtype=np.float32)
        starts = range(0, len(img_idx), batch_size)
        for s in (progress(starts) if progress else starts):
            ii = torch.from_numpy(img_idx[s:s + batch_size])
            cc = torch.from_numpy(cap_idx[s:s + batch_size])
            if self.contexts is None:
                src = self.text[cc]
                src = src[:, : int(src.ne(pad_idx).sum(1).max())]
            else:  # the text of a pair depends on its image too
                src = data_utils.collate_tokens([torch.cat([self.captions[c], self.contexts[i]]) for i, c in
                                                 zip(ii.tolist(), cc.tolist())], pad_idx, left_pad=False)
            pad = regions["region_padding_mask"][ii]
            r = int((~pad).sum(1).max())
            out = model(src.to(device), regions=regions["regions"][ii, :r].to(device, dtype),
                        region_boxes=regions["region_boxes"][ii, :r].to(device, dtype),
                        region_padding_mask=pad[:, :r].to(device), vlm=True, features_only=False)
            scores[s:s + batch_size] = out["vlm_logits"].float().cpu().numpy()
        return scores


def score_pairs(model, captions, images, pad_idx, batch_size=256, num_shards=1, shard_id=0, pairs=None,
                progress=None, device="cpu", contexts=None):
    """Cross-encoder match logits for (image, caption) pairs (PairScorer's arguments).

    pairs: optional (P, 2) array of (image index, caption index); default every pair, image-major.
    Returns (pair_ids, scores) for this shard; pair_ids index the default image-major order.
    """
    n_img, n_cap = len(images), len(captions)
    if pairs is None:
        lo, hi = shard_range(n_img * n_cap, num_shards, shard_id)
        pair_ids = np.arange(lo, hi, dtype=np.int64)
        img_idx, cap_idx = pair_ids // n_cap, pair_ids % n_cap
    else:
        pairs = np.asarray(pairs, dtype=np.int64)
        lo, hi = shard_range(len(pairs), num_shards, shard_id)
        img_idx, cap_idx = pairs[lo:hi, 0], pairs[lo:hi, 1]
        pair_ids = img_idx * n_cap + cap_idx
    scorer = PairScorer(captions, images, pad_idx, contexts)
    return pair_ids, scorer(model, img_idx, cap_idx, batch_size, device, progress)


def merge_shards(parts, n_images, n_captions, fill=-np.inf):
    """Exact merge of (pair_ids, scores) shards into an (n_images, n_captions) matrix."""
    matrix = np.full(n_images * n_captions, fill, dtype=np.float32)
    seen = np.zeros(n_images * n_captions, dtype=bool)
    for pair_ids, scores in parts:
        if len(pair_ids) != len(scores) or (len(pair_ids) and not 0 <= pair_ids.min() <= pair_ids.max() < len(seen)):
            raise ValueError(f"pair ids outside the {n_images} x {n_captions} pairs of this split (scores of another "
                             f"split, --max-images or data folder?)")
        if seen[pair_ids].any():
            raise ValueError("two shards scored the same pair")
        matrix[pair_ids] = scores
        seen[pair_ids] = True
    return matrix.reshape(n_images, n_captions), seen.reshape(n_images, n_captions)


def recall_line(lang, m, chance, extra=""):
    """One language's recall as the retrieval commands print it."""
    return (f"{lang}: mR {m['mR']:.1f}  i2t R@1/5/10 {m['i2t_r1']:.1f}/{m['i2t_r5']:.1f}/{m['i2t_r10']:.1f}  "
            f"t2i R@1/5/10 {m['t2i_r1']:.1f}/{m['t2i_r5']:.1f}/{m['t2i_r10']:.1f}{extra}  (chance mR {chance:.1f})")


def save_shard_scores(path, arrays):
    """A shard's pair ids and scores (``{lang}_ids``, ``{lang}_scores``, ...) as one .npz (``path``: its staged
    name, outputs.Staging; np.savez adds .npz to a name without it, so the name keeps the target's)."""
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_shard_scores(path, lang, two_stage=False):
    """The arrays of one language from a file written with --scores-out; one line when it is not one."""
    import zipfile

    keys = [f"{lang}_ids", f"{lang}_scores"] + ([f"{lang}_dual", f"{lang}_pairs"] if two_stage else [])
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise M3PInputError(f"{path}: not a scores file of --scores-out (an .npz; {e.__class__.__name__})")
    if not hasattr(z, "files"):
        raise M3PInputError(f"{path}: a single array, not a scores file of --scores-out (an .npz of {', '.join(keys)})")
    missing = [k for k in keys if k not in z.files]
    if missing:
        raise M3PInputError(f"{path}: no {', '.join(missing)} (has {', '.join(z.files) or 'nothing'}): not a "
                            f"{'two-stage ' if two_stage else ''}scores file of --scores-out for language {lang}")
    try:
        return {k: z[k] for k in keys}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise M3PInputError(f"{path}: damaged scores file ({e.__class__.__name__}: {str(e)[:200]})")


class RetrievalSubset(NamedTuple):
    """What the cross-encoder ranks for one language: captions (token tensors), each caption's image index,
    the distinct images (region dicts, store order) and, for MILD, each image's context (else None)."""

    captions: list
    caption_image: np.ndarray
    images: list
    contexts: Optional[list] = None


def retrieval_subset(task, lang, split, max_images=None, context=False):
    """The retrieval set of one language of ``split``: its first ``max_images`` images (store order; None or 0:
    all) with their captions, and with ``context`` (MILD) each image's context. m3p-retrieval-eval and the
    retrieval recall of validation (evaluation/validation.py) both read it here, so they rank the same set."""
    captions, rows = task.load_captions(lang, split)
    uniq, caption_image = np.unique(rows, return_inverse=True)
    captions = [captions[i] for i in range(len(captions))]
    contexts = None
    if context:  # cut so that any caption of the split plus the context fits --tokens-per-sample
        contexts = image_contexts(task, lang, split, rows, task.cfg.tokens_per_sample - max(len(c) for c in captions))
    if max_images:
        keep = caption_image < max_images
        captions = [c for c, k in zip(captions, keep) if k]
        caption_image, uniq = caption_image[keep], uniq[:max_images]
        contexts = contexts[:max_images] if contexts is not None else None
    regions = task.region_dataset(split)
    return RetrievalSubset(captions, caption_image, [regions.get_row(int(r)) for r in uniq], contexts)


def language_split(task, lang, split):
    """Captions (token tensors), their image index, and the distinct images (region dicts, in store order)."""
    return retrieval_subset(task, lang, split)[:3]


def image_contexts(task, lang, split, rows, limit):
    """MILD: per distinct image (np.unique order), the context of its first query line, as ``</s> ... </s>``,
    cut so that any query of the split plus the context fits ``limit`` tokens."""
    import torch

    from ..data.retrieval_dataset import load_contexts

    contexts = load_contexts(task, lang, split, len(rows))
    _, first = np.unique(rows, return_index=True)
    out = []
    for i in first:
        c = contexts[int(i)]
        out.append(c if len(c) <= limit else torch.cat([c[: limit - 1], c[-1:]]))
    return out
