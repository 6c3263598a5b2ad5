"""Retrieval recall as fairseq batches: one item per query, so that validation ranks a fixed set in
fairseq's own loop (``valid_step`` per batch, every worker its share of the batches).

A query is an image ranked against every caption of its language (image -> text) or a caption ranked
against every image (text -> image). Its rank needs only its own row or column of the score matrix,
so a query's R@K hits are final where it is scored, and sums of hits and counts per language add up
across batches and workers (a full score matrix would not). Items carry ids only; the languages'
captions and images (``RetrievalSubset``, evaluation/retrieval.py) stay in this object, and the
scores of a validation are kept per language, so the text -> image queries of a worker reuse the
pairs its image -> text queries scored. Written here because no fairseq dataset ranks pairs.
"""
import numpy as np
import torch

from ..errors import M3PDataError
from .sized import SizedDataset

IMAGE_QUERY, CAPTION_QUERY = 0, 1


class RetrievalQueryDataset(SizedDataset):
    """Queries of the languages ``subsets`` ({lang: RetrievalSubset}), language by language, the image queries
    of a language before its caption queries. ``name`` tells batches of different query sets apart."""

    def __init__(self, name, subsets):
        if not subsets:
            raise ValueError("no retrieval languages")
        self.name, self.langs, self.subsets = name, list(subsets), list(subsets.values())
        queries = []
        for k, s in enumerate(self.subsets):
            n_img, n_cap = len(s.images), len(s.captions)
            queries.append(np.stack([np.full(n_img, k), np.full(n_img, IMAGE_QUERY), np.arange(n_img)], 1))
            queries.append(np.stack([np.full(n_cap, k), np.full(n_cap, CAPTION_QUERY), np.arange(n_cap)], 1))
        self.queries = np.concatenate(queries).astype(np.int64)
        # a query costs its candidates (pairs scored); batching counts queries, not this
        n_cand = [(len(s.captions), len(s.images)) for s in self.subsets]
        self._sizes = np.array([n_cand[k][kind] for k, kind, _ in self.queries], dtype=np.int64)
        self.scores = {}

    def __len__(self):
        return len(self.queries)

    def __getitem__(self, index):
        return index

    def ordered_indices(self):
        return np.arange(len(self))  # image queries of a language first: its caption queries then find their pairs scored

    def collater(self, samples):
        if len(samples) == 0:
            return {}
        idx = torch.LongTensor(samples)
        return {"id": idx, "nsentences": len(samples), "ntokens": int(self._sizes[samples].sum()),
                "retrieval_queries": torch.from_numpy(self.queries[samples]), "retrieval_set": self.name}

    def batches(self, indices, max_sentences, step):
        """Batches of at most ``max_sentences`` queries, as many as a multiple of ``step`` (workers x update_freq):
        fairseq's grouped iterator drops the batches past the last multiple, which would drop queries."""
        n = len(indices)
        if n < step:
            raise M3PDataError(f"retrieval validation ({self.name}): {n} queries for {step} workers; validate on "
                               f"more images (--valid-retrieval-images)")
        count = -(-n // (max_sentences or n))
        count = -(-count // step) * step
        return [b for b in np.array_split(np.asarray(indices, dtype=np.int64), count)]

    def forget_scores(self):
        """A new validation (the model changed): score every pair again."""
        self.scores = {}

    def score_matrix(self, k):
        """The score matrix of language ``k`` as filled so far (NaN: not scored in this validation)."""
        if k not in self.scores:
            s = self.subsets[k]
            self.scores[k] = np.full((len(s.images), len(s.captions)), np.nan, dtype=np.float32)
        return self.scores[k]
