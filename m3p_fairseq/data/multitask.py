"""One objective per update: a dataset of objective datasets and the batch iterator that groups them.

Every batch comes from one objective, and fairseq's GroupedEpochBatchIterator lays the batches
out so that all workers and all ``--update-freq`` micro-batches of one update draw from the same
objective (mixing objectives inside one step makes DDP hang or complain about unused
parameters). Per-objective ratios are applied by resampling each objective's dataset to its share
before batching, so the count of updates per objective follows the ratios.
"""
import math
from collections import OrderedDict

import numpy as np
from fairseq.data import FairseqDataset, ResamplingDataset
from fairseq.data.iterators import GroupedEpochBatchIterator

from .sized import SizedDataset


def alpha_sampling_probs(sizes, alpha):
    """p_l = q_l^alpha / sum_k q_k^alpha with q_l = n_l / sum n (the paper's a = 0.3)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    q = sizes / sizes.sum()
    p = q ** alpha
    return p / p.sum()


def resample_to_probs(datasets, probs, seed, epoch, scale=1.0):
    """ResamplingDataset per language so that language l makes up probs[l] of the total
    (the total is the sum of the natural sizes times ``scale``)."""
    total = scale * sum(len(d) for d in datasets)
    out = []
    for d, p in zip(datasets, probs):
        ratio = p * total / len(d)
        out.append(ResamplingDataset(d, size_ratio=ratio, seed=seed, epoch=epoch, replace=ratio >= 1.0))
    return out


def _sizes_of(dataset):
    sizes = dataset.sizes
    if isinstance(sizes, (list, tuple)):  # NestedDictionaryDataset keeps one array per field
        sizes = np.max(np.stack([np.asarray(s) for s in sizes]), axis=0)
    return np.asarray(sizes, dtype=np.int64)


class MultitaskDataset(SizedDataset):
    """Concatenation of named objective datasets; global index -> (objective, local index)."""

    def __init__(self, datasets: "OrderedDict[str, FairseqDataset]", split="train"):
        if not datasets:
            raise ValueError("no objective datasets")
        self.names = list(datasets.keys())
        self.datasets = list(datasets.values())
        self.split = split
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        self._sizes = np.concatenate([_sizes_of(d) for d in self.datasets])

    def __len__(self):
        return int(self.offsets[-1])

    def _locate(self, index):
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return k, int(index - self.offsets[k])

    def __getitem__(self, index):
        k, local = self._locate(index)
        return k, self.datasets[k][local]

    def collater(self, samples):
        if len(samples) == 0:
            return {}
        k = samples[0][0]
        if any(s[0] != k for s in samples):
            raise RuntimeError("a batch mixes objectives; batches must be built per objective")
        batch = self.datasets[k].collater([s[1] for s in samples])
        if batch:
            batch["objective"] = self.names[k]
        return batch

    def ordered_indices_of(self, k):
        """Global indices of objective k, ordered by that dataset's own ordering."""
        return self.datasets[k].ordered_indices() + self.offsets[k]

    def ordered_indices(self):
        return np.concatenate([self.ordered_indices_of(k) for k in range(len(self.datasets))])

    @property
    def supports_prefetch(self):
        return False

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return all(getattr(d, "can_reuse_epoch_itr_across_epochs", False) for d in self.datasets)

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)


class ObjectiveGroupedIterator(GroupedEpochBatchIterator):
    """GroupedEpochBatchIterator whose length is per shard, as EpochBatchIterator's is."""

    def __len__(self):
        return int(math.ceil(sum(self.lengths) / float(self.num_shards)))
