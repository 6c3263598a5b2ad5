"""The size bookkeeping shared by the plugin's datasets: a per-item size array, batching by it."""
import numpy as np
from fairseq.data import FairseqDataset


class SizedDataset(FairseqDataset):
    """A FairseqDataset whose items cost ``self._sizes[i]`` tokens (set by the subclass)."""

    _sizes: np.ndarray

    @property
    def sizes(self):
        return self._sizes

    def size(self, index):
        return int(self._sizes[index])

    def num_tokens(self, index):
        return int(self._sizes[index])

    def num_tokens_vec(self, indices):
        return self._sizes[indices]



class SizeOrderedDataset(SizedDataset):
    """Items ordered by size with random tie-breaking (under fairseq's per-epoch seed), so batches
    hold items of similar length; the sizes do not change across epochs."""

    def ordered_indices(self):
        return np.lexsort((np.random.permutation(len(self)), self._sizes))

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return True
