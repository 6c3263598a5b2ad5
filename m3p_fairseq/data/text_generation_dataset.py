"""Text (+ image) -> text items for the generation model: MMT (a caption and its image -> the
caption in another language) and NTG (a news body -> its title).

Each item carries its source and target language ids separately: MMT feeds different ones to the
encoder and the decoder, NTG the same one. Batches are ``seq2seq_collate``'s (fairseq's translation
layout plus regions and language ids), so fairseq-generate and SequenceGenerator work unchanged.
"""
import numpy as np

from .seq2seq_collate import collate_seq2seq
from .sized import SizeOrderedDataset


class TextGenerationDataset(SizeOrderedDataset):
    """Item i: ``sources[i]`` (``<s> ... </s>``) [+ the regions of ``image_rows[i]``] -> ``targets[i]``
    (``... </s>``, no ``<s>``), with ``src_langs[i]`` and ``tgt_langs[i]``."""

    def __init__(self, sources, targets, src_langs, tgt_langs, dictionary, regions=None, image_rows=None):
        n = len(sources)
        if not (len(targets) == n == len(src_langs) == len(tgt_langs)):
            raise ValueError(f"{n} sources, {len(targets)} targets, {len(src_langs)}/{len(tgt_langs)} language ids")
        if (regions is None) != (image_rows is None) or (image_rows is not None and len(image_rows) != n):
            raise ValueError("regions and image_rows go together, one image row per source")
        self.sources, self.targets, self.regions = sources, targets, regions
        self.src_langs = np.asarray(src_langs, dtype=np.int64)
        self.tgt_langs = np.asarray(tgt_langs, dtype=np.int64)
        self.image_rows = None if image_rows is None else np.asarray(image_rows, dtype=np.int64)
        self.pad, self.eos = dictionary.pad(), dictionary.eos()
        self.src_sizes = np.asarray(sources.sizes, dtype=np.int64)
        if regions is not None:
            self.src_sizes = self.src_sizes + np.minimum(regions.store.num_regions[self.image_rows], regions.max_regions)
        self.tgt_sizes = np.asarray(targets.sizes, dtype=np.int64)
        self._sizes = self.src_sizes + self.tgt_sizes

    def __len__(self):
        return len(self.sources)

    def size(self, index):
        # (source, target) as LanguagePairDataset, so generation filters each against its own limit
        return int(self.src_sizes[index]), int(self.tgt_sizes[index])

    def __getitem__(self, index):
        item = {"id": index, "source": self.sources[index], "target": self.targets[index],
                "src_lang": int(self.src_langs[index]), "tgt_lang": int(self.tgt_langs[index])}
        if self.regions is not None:
            item["image"] = self.regions.get_row(int(self.image_rows[index]))
        return item

    def collater(self, samples):
        return collate_seq2seq(samples, self.pad, self.eos)
