"""IC and DIC: decode a caption from its image's regions (the captioning task's test items too).

IC feeds the regions as they are. DIC first corrupts them: spans of regions, Poisson(3)
lengths, are replaced by zero vectors. Spans run over the store's region order (the detector's,
by confidence) since regions have no reading order; their boxes are kept, as MRM keeps the box of
a zeroed region, so the model knows where something was but not what. A 0-length span changes
nothing (there is no region to insert). The share of regions inside spans is ``dic_mask_ratio``
on average; the paper gives none, so the default is xDAE's 0.3.
"""
import numpy as np
import torch
from fairseq.data import data_utils

from .region_dataset import RegionDataset
from .sized import SizeOrderedDataset
from .seq2seq_collate import collate_seq2seq
from .spans import sample_spans, span_mask

def zero_region_spans(num_regions, ratio, poisson_lambda):
    """Which regions DIC zeroes, and the spans drawn. Call under a seeded numpy RNG."""
    starts, lengths = sample_spans(num_regions, ratio, poisson_lambda)
    return span_mask(num_regions, starts, lengths), (starts, lengths)


class CaptionGenerationDataset(SizeOrderedDataset):
    """Item i: the regions of image ``image_rows[i]`` as the source, caption ``caption_index[i]``
    (without its ``<s>``) as the target, ``langs[i]`` as source and target language.

    Args:
        captions: token dataset of ``<s> ... </s>`` captions
        image_rows: per item, the image's row in ``regions.store``
        langs: per item, the caption's language id
        regions: RegionDataset over the store
        zero_spans: DIC's corruption (spans of regions zeroed); False: IC, the regions as they are
        caption_index: per item, its caption in ``captions`` (default: item i is caption i)
    """

    def __init__(self, captions, image_rows, langs, regions: RegionDataset, dictionary, zero_spans=False, seed=1,
                 dic_mask_ratio=0.3, dic_poisson_lambda=3.0, caption_index=None):
        if not (0.0 < dic_mask_ratio < 1.0 and dic_poisson_lambda > 0):
            raise ValueError("need 0 < dic_mask_ratio < 1 and dic_poisson_lambda > 0")
        self.caption_index = np.arange(len(captions), dtype=np.int64) if caption_index is None \
            else np.asarray(caption_index, dtype=np.int64)
        self.image_rows = np.asarray(image_rows, dtype=np.int64)
        self.langs = np.asarray(langs, dtype=np.int64)
        if not (len(self.caption_index) == len(self.image_rows) == len(self.langs)):
            raise ValueError(f"{len(self.caption_index)} captions, {len(self.image_rows)} image rows and "
                             f"{len(self.langs)} language ids")
        self.captions, self.regions, self.zero_spans = captions, regions, zero_spans
        self.pad, self.eos = dictionary.pad(), dictionary.eos()
        self.seed, self.epoch = seed, 1
        self.dic_mask_ratio, self.dic_poisson_lambda = dic_mask_ratio, dic_poisson_lambda
        self.num_regions = np.minimum(regions.store.num_regions[self.image_rows], regions.max_regions).astype(np.int64)
        self.target_sizes = np.asarray(captions.sizes, dtype=np.int64)[self.caption_index] - 1
        self._sizes = self.num_regions + self.target_sizes

    def __len__(self):
        return len(self.image_rows)

    @property
    def src_langs(self):  # (as TextGenerationDataset's: a caption's language is source and target language)
        return self.langs

    tgt_langs = src_langs

    def size(self, index):
        # (source, target) as LanguagePairDataset, so generation filters each against its own limit
        return int(self.num_regions[index]), int(self.target_sizes[index])

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, index):
        caption = self.captions[int(self.caption_index[index])]
        image = self.regions.get_row(int(self.image_rows[index]))
        if self.zero_spans:
            with data_utils.numpy_seed(self.seed, self.epoch, index):
                zeroed, _ = zero_region_spans(len(image["features"]), self.dic_mask_ratio, self.dic_poisson_lambda)
            image = dict(image, features=image["features"].clone())
            image["features"][torch.from_numpy(zeroed)] = 0.0
        lang = int(self.langs[index])
        return {"id": index, "image": image, "target": caption[1:], "src_lang": lang, "tgt_lang": lang}

    def collater(self, samples):
        return collate_seq2seq(samples, self.pad, self.eos)
