"""Retrieval fine-tuning pairs: each caption with its image and sampled negatives (the paper's VLM
fine-tuning: 3 negatives per positive, each replacing the image or the text).

Written here because no fairseq dataset pairs two modalities. A negative keeps one side of the
positive and replaces the other: the image by another image, or the text by a caption of another
image drawn from the same group (language), so a text negative is never told apart by its
language alone. In MILD mode each image comes with its context text, which travels with the image:
an image negative brings its own context. All sampling runs under
``data_utils.numpy_seed(seed, epoch, index)``.
"""
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from fairseq.data import ConcatDataset, PrependTokenDataset, data_utils
from fairseq.dataclass import FairseqDataclass

from ..errors import M3PDataError
from .image_caption_dataset import require_two_images
from .region_dataset import RegionDataset, text_image_input
from .sized import SizeOrderedDataset

POSITIVE, TEXT_REPLACED, IMAGE_REPLACED = 0, 1, 2


@dataclass
class RetrievalDataConfig(FairseqDataclass):
    """Retrieval pairs and the dual encoder: options of the m3p_retrieval task and of the ``ret`` objective."""

    num_negatives: int = field(default=3, metadata={"help": "negatives sampled per positive pair (paper: 3)"})
    text_negative_prob: float = field(default=0.5, metadata={
        "help": "share of negatives that replace the text (the others replace the image)"})
    context: bool = field(default=False, metadata={
        "help": "MILD mode: feed each image's context text (DATA/mild/{lang}/context/{split}) with the image"})
    dual_dim: int = field(default=128, metadata={
        "help": "embedding size of the dual encoder's projection heads (two-stage retrieval); 0: no dual encoder"})


class RetrievalDataset(SizeOrderedDataset):
    """Item i: caption i and its image (label 1), then ``num_negatives`` pairs (label 0).

    Args:
        captions: token dataset (``<s> ... </s>``)
        image_rows: per caption, its image's row in ``regions.store``
        groups: per caption, a group id (its language); text negatives come from the same group
        regions: RegionDataset over the store
        contexts: optional token dataset line-aligned with ``captions`` (``</s> context </s>``),
            appended to the text of every pair: the context of the pair's image (MILD)
        max_text: cut longer texts (query + context) to this many tokens, at the end of the context
    """

    def __init__(self, captions, image_rows, groups, regions: RegionDataset, pad_idx, num_negatives=3,
                 text_negative_prob=0.5, seed=1, contexts=None, max_text=None):
        if num_negatives < 0 or not 0.0 <= text_negative_prob <= 1.0:
            raise ValueError("num_negatives must be >= 0 and text_negative_prob in [0, 1]")
        if not (len(captions) == len(image_rows) == len(groups)):
            raise ValueError(f"{len(captions)} captions, {len(image_rows)} image rows, {len(groups)} groups")
        if contexts is not None and len(contexts) != len(captions):
            raise ValueError(f"{len(contexts)} contexts for {len(captions)} captions")
        self.captions, self.regions, self.pad_idx, self.contexts = captions, regions, pad_idx, contexts
        self.image_rows = np.asarray(image_rows, dtype=np.int64)
        self.groups = np.asarray(groups, dtype=np.int64)
        self.num_negatives, self.text_negative_prob = num_negatives, text_negative_prob
        self.seed, self.epoch, self.max_text = seed, 1, max_text
        self.unique_rows, first = np.unique(self.image_rows, return_index=True)
        self.first_caption_of_row = dict(zip(self.unique_rows.tolist(), first.tolist()))  # whose context an image carries
        self.members = {g: np.nonzero(self.groups == g)[0] for g in np.unique(self.groups)}
        if num_negatives:  # text negatives come from the caption's own group
            for g, members in self.members.items():
                require_two_images(self.image_rows[members], f"the captions of group {g}", regions.store)
        n_regions = np.minimum(regions.store.num_regions[self.image_rows], regions.max_regions)
        text = np.asarray(captions.sizes, dtype=np.int64)
        if contexts is not None:
            text = text + np.asarray(contexts.sizes, dtype=np.int64)
        # a pair's length is what must fit the model; an item costs that for each of its pairs
        self._sizes = text + n_regions
        self._tokens = (num_negatives + 1) * self._sizes

    def __len__(self):
        return len(self.captions)

    def num_tokens(self, index):
        return int(self._tokens[index])

    def num_tokens_vec(self, indices):
        return self._tokens[indices]

    def set_epoch(self, epoch):
        self.epoch = epoch
        if hasattr(self.captions, "set_epoch"):
            self.captions.set_epoch(epoch)

    def sample_pairs(self, index):
        """[(caption index, image row, kind)] for item ``index``: the positive, then the negatives."""
        row = int(self.image_rows[index])
        pairs = [(index, row, POSITIVE)]
        with data_utils.numpy_seed(self.seed, self.epoch, index):
            for _ in range(self.num_negatives):
                if np.random.rand() < self.text_negative_prob:
                    pairs.append((self._other_caption(index, row), row, TEXT_REPLACED))
                else:
                    pairs.append((index, self._other_row(row), IMAGE_REPLACED))
        return pairs

    def _other_row(self, row):
        while True:
            r = int(self.unique_rows[np.random.randint(len(self.unique_rows))])
            if r != row:
                return r

    def _other_caption(self, index, row):
        pool = self.members[int(self.groups[index])]
        for _ in range(1000):
            j = int(pool[np.random.randint(len(pool))])
            if self.image_rows[j] != row:
                return j
        # the image has nearly all of the group's captions: draw among the others directly
        others = pool[self.image_rows[pool] != row]
        return int(others[np.random.randint(len(others))])

    def text_of(self, caption, row):
        text = self.captions[caption]
        if self.contexts is None:
            return text
        # the context belongs to the image: the pair's own line for the positive, the image's first line otherwise
        line = caption if self.image_rows[caption] == row else self.first_caption_of_row[row]
        text = torch.cat([text, self.contexts[line]])
        if self.max_text is not None and len(text) > self.max_text:
            text = torch.cat([text[: self.max_text - 1], text[-1:]])  # the context gives way, its </s> stays
        return text

    def __getitem__(self, index):
        pairs = self.sample_pairs(index)
        images = {}
        for _, row, _ in pairs:
            if row not in images:
                images[row] = self.regions.get_row(row)
        return {
            "id": index,
            "texts": [self.text_of(c, r) for c, r, _ in pairs],
            "images": [images[r] for _, r, _ in pairs],
            "labels": [1.0 if kind == POSITIVE else 0.0 for _, _, kind in pairs],
            "rows": [r for _, r, _ in pairs],
            "dual_text": self.captions[index],  # the caption alone, for the dual encoder
        }

    def collater(self, samples):
        if len(samples) == 0:
            return {}
        texts = [t for s in samples for t in s["texts"]]
        group = self.num_negatives + 1
        return {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "nsentences": len(texts),
            "ntokens": int(sum(len(t) for t in texts)),
            "net_input": text_image_input(texts, [im for s in samples for im in s["images"]], self.pad_idx),
            "vlm_target": torch.tensor([l for s in samples for l in s["labels"]], dtype=torch.float),
            "image_rows": torch.LongTensor([r for s in samples for r in s["rows"]]),
            # the dual encoder sees each positive once: its caption alone, its image alone
            "dual": {
                "src_tokens": data_utils.collate_tokens([s["dual_text"] for s in samples], self.pad_idx, left_pad=False),
                "pair_index": torch.arange(len(samples)) * group,
                "image_rows": torch.LongTensor([s["rows"][0] for s in samples]),
            },
        }


def load_contexts(task, lang, split, num_captions):
    """MILD contexts of ``captions/{lang}/{split}``, line for line, as ``</s> context </s>``."""
    prefix = os.path.join(task.data_path(), "mild", lang, "context", split)
    if not os.path.exists(prefix + ".bin"):
        raise M3PDataError(f"{prefix}.bin: no MILD contexts for captions/{lang}/{split} (--context needs the context "
                           f"of each query line; m3p-import-dataset mild writes them)")
    contexts = task.load_tokens(prefix, f"{lang} {split} contexts")
    if len(contexts) != num_captions:
        raise M3PDataError(f"{prefix}.bin: {len(contexts)} contexts for {num_captions} query lines in "
                           f"captions/{lang}/{split}.bin")
    return PrependTokenDataset(contexts, task.dictionary.eos())


def retrieval_pairs(task, split, langs, seed):
    """The RetrievalDataset of ``split`` over the captions of ``langs`` (each language a group), with the
    task's RetrievalDataConfig options; English training captions code-switched with --code-switch."""
    cfg = task.cfg
    caps, rows, groups, ctxs = [], [], [], []
    for g, lang in enumerate(langs):
        c, r = task.load_captions(lang, split, negatives=cfg.num_negatives > 0)
        if cfg.context:
            ctxs.append(load_contexts(task, lang, split, len(c)))
        caps.append(task.code_switched(c, lang, split, seed))
        rows.append(r)
        groups.append(np.full(len(c), g))
    concat = (lambda ds: ConcatDataset(ds) if len(ds) > 1 else ds[0])
    try:
        return RetrievalDataset(concat(caps), np.concatenate(rows), np.concatenate(groups), task.region_dataset(split),
                                task.dictionary.pad(), cfg.num_negatives, cfg.text_negative_prob, seed=seed,
                                contexts=concat(ctxs) if ctxs else None, max_text=cfg.tokens_per_sample)
    except ValueError as e:
        raise M3PDataError(f"{split} ({','.join(langs)}): {e}")
