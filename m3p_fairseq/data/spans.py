"""Poisson-length spans for xDAE's text infilling and DIC's region corruption.

Written by hand because fairseq's only span sampler (DenoisingDataset's text infilling, BART's)
trims the last span to a token budget and lets spans overlap and merge, so the span lengths a
model sees there are not Poisson(lambda); here every span keeps its drawn length.
"""
import numpy as np


def sample_spans(num_items, ratio, poisson_lambda):
    """Spans over ``num_items`` items with Poisson(``poisson_lambda``) lengths, placed uniformly at
    random so that two spans never touch (one [MASK] per span stays unambiguous).

    On average ``ratio`` of the items fall inside spans: the number of spans is
    ratio * num_items / lambda, rounded up or down at random in proportion. A span that does not
    fit is dropped whole, never cut; spans fit with room to spare unless the sequence is very
    short, so lengths follow Poisson(lambda) exactly on sentences of a few dozen words and lean
    short on sentences of a few words. Call under a seeded numpy RNG.

    Returns (starts, lengths): int arrays sorted by start. A span (s, n) covers items s .. s+n-1;
    a 0-length span at s stands for an insertion before item s.
    """
    if num_items <= 0 or ratio <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    num_spans = int(ratio * num_items / poisson_lambda + np.random.rand())
    lengths = np.random.poisson(poisson_lambda, num_spans).astype(np.int64)
    # k spans need their lengths plus k - 1 untouched items between them
    while len(lengths) and (lengths.sum() > num_items or len(lengths) > num_items - lengths.sum() + 1):
        lengths = lengths[:-1]
    free = num_items - int(lengths.sum())
    # span k goes into gap k of the free items (free + 1 gaps, at most one span each)
    gaps = np.sort(np.random.choice(free + 1, len(lengths), replace=False)).astype(np.int64)
    starts = gaps + np.cumsum(lengths) - lengths  # plus the lengths of the spans before it
    return starts, lengths


def span_mask(num_items, starts, lengths):
    """Boolean mask of the items inside the spans."""
    mask = np.zeros(num_items, dtype=bool)
    for s, n in zip(starts, lengths):
        mask[s:s + n] = True
    return mask
