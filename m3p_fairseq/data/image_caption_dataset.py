"""Image-caption pairs for MMLM, MRM and VLM, and plain pairs for scoring.

Text masking comes from fairseq's MaskTokensDataset (passed in as ``source``/``target``); what
is written here is the region side: MRM's region masking (15% of regions; a masked region's
input is zeros 90% of the time and kept 10%), and VLM's negatives (the image or the text of a
pair replaced by one from another image). Following the reference code, an example masks either
words (MMLM) or regions (MRM), never both, and only matched pairs are masked: each objective
here is its own dataset and VLM pairs are never masked.
"""
import numpy as np
import torch
from fairseq.data import data_utils

from ..errors import M3PInputError
from .region_dataset import RegionDataset, collate_regions
from .sized import SizeOrderedDataset

OBJECTIVES = ("pairs", "mmlm", "mrm", "vlm")


def mask_regions(num_regions, mask_prob, zero_prob):
    """Choose regions to mask (as MaskTokensDataset does for tokens: expected rate exactly
    ``mask_prob`` by probabilistic rounding) and which of them get a zero input.
    Call under a seeded numpy RNG. Returns (masked, zeroed) boolean arrays."""
    masked = np.zeros(num_regions, dtype=bool)
    num_mask = int(mask_prob * num_regions + np.random.rand())
    if num_mask > 0:
        masked[np.random.choice(num_regions, num_mask, replace=False)] = True
    zeroed = masked & (np.random.rand(num_regions) < zero_prob)
    return masked, zeroed


def require_two_images(image_rows, source, store=None):
    """Refuse captions that all belong to one image, in one line naming ``source``: a negative pair
    takes the image or the caption of another image (VLM, retrieval), and there is none to draw."""
    rows = np.unique(np.asarray(image_rows))
    if len(rows) < 2:
        which = f"image {store.image_ids[int(rows[0])]!r}" if len(rows) and store is not None else \
            ("one image" if len(rows) else "no image")
        raise M3PInputError(f"{source}: every caption belongs to {which}; negative pairs need captions of at "
                            f"least two images")


class ImageCaptionDataset(SizeOrderedDataset):
    """Caption ``i`` with the regions of its image ``image_rows[i]``, prepared for one objective.

    Args:
        captions: token dataset (``<s> ... </s>``); the text fed to the model unless masked
        image_rows: for each caption, its image's row in ``regions.store``
        regions: RegionDataset over the store
        objective: "pairs" (no masking), "mmlm", "mrm" or "vlm"
        masked_source, masked_target: MaskTokensDataset pair over ``captions`` (MMLM only)
    """

    def __init__(self, captions, image_rows, regions: RegionDataset, pad_idx, objective="pairs", seed=1,
                 masked_source=None, masked_target=None, mrm_prob=0.15, mrm_zero_prob=0.9, vlm_negative_prob=0.5,
                 vlm_text_negative_prob=0.5):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
        if objective == "mmlm" and (masked_source is None or masked_target is None):
            raise ValueError("MMLM needs masked_source and masked_target")
        if not (0.0 < mrm_prob < 1.0 and 0.0 <= mrm_zero_prob <= 1.0 and 0.0 <= vlm_negative_prob <= 1.0):
            raise ValueError("mrm_prob must be in (0, 1); mrm_zero_prob and vlm_negative_prob in [0, 1]")
        if len(image_rows) != len(captions):
            raise ValueError(f"{len(image_rows)} image rows for {len(captions)} captions")
        self.captions, self.regions, self.pad_idx = captions, regions, pad_idx
        self.image_rows = np.asarray(image_rows, dtype=np.int64)
        self.unique_rows = np.unique(self.image_rows)
        if objective == "vlm" and vlm_negative_prob > 0:
            require_two_images(self.image_rows, "VLM captions", regions.store)  # or negatives are never found
        self.objective, self.seed, self.epoch = objective, seed, 1
        self.masked_source, self.masked_target = masked_source, masked_target
        self.mrm_prob, self.mrm_zero_prob = mrm_prob, mrm_zero_prob
        self.vlm_negative_prob, self.vlm_text_negative_prob = vlm_negative_prob, vlm_text_negative_prob
        region_counts = np.minimum(regions.store.num_regions[self.image_rows], regions.max_regions)
        self._sizes = np.asarray(captions.sizes, dtype=np.int64) + region_counts
        self._text_sizes = np.asarray(captions.sizes, dtype=np.int64)

    def __len__(self):
        return len(self.captions)

    def set_epoch(self, epoch):
        self.epoch = epoch
        for ds in (self.captions, self.masked_source, self.masked_target):
            if ds is not None and hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    def _other_row(self, row):
        while True:
            r = int(self.unique_rows[np.random.randint(len(self.unique_rows))])
            if r != row:
                return r

    def _other_caption(self, row):
        while True:
            j = np.random.randint(len(self.captions))
            if self.image_rows[j] != row:
                return j

    def __getitem__(self, index):
        row = int(self.image_rows[index])
        item = {"id": index}
        if self.objective == "mmlm":
            item["source"], item["target"] = self.masked_source[index], self.masked_target[index]
            item["image"] = self.regions.get_row(row)
            return item
        if self.objective == "vlm":
            with data_utils.numpy_seed(self.seed, self.epoch, index):
                label = 1.0
                text_index = index
                if np.random.rand() < self.vlm_negative_prob:
                    label = 0.0
                    if np.random.rand() < self.vlm_text_negative_prob:
                        text_index = self._other_caption(row)
                    else:
                        row = self._other_row(row)
            item["source"], item["image"], item["vlm_target"] = self.captions[text_index], self.regions.get_row(row), label
            return item
        item["source"] = self.captions[index]
        image = self.regions.get_row(row)
        if self.objective == "mrm":
            n = len(image["features"])
            with data_utils.numpy_seed(self.seed, self.epoch, index):
                masked, zeroed = mask_regions(n, self.mrm_prob, self.mrm_zero_prob)
            masked, zeroed = torch.from_numpy(masked), torch.from_numpy(zeroed)
            item["mrm_feat_target"] = image["features"][masked]  # MRM regresses the raw feature
            item["mrm_cls_target"] = image["classes"][masked]
            image = dict(image, features=image["features"].masked_fill(zeroed.unsqueeze(-1), 0.0))
            item["masked_regions"] = masked
        item["image"] = image
        return item

    def collater(self, samples):
        if len(samples) == 0:
            return {}
        src = data_utils.collate_tokens([s["source"] for s in samples], self.pad_idx, left_pad=False)
        regions = collate_regions([s["image"] for s in samples])
        batch = {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": int(sum(len(s["source"]) for s in samples)),
            "net_input": {
                "src_tokens": src,
                "src_lengths": torch.LongTensor([len(s["source"]) for s in samples]),
                "regions": regions["regions"],
                "region_boxes": regions["region_boxes"],
                "region_padding_mask": regions["region_padding_mask"],
            },
            "region_classes": regions["region_classes"],
        }
        if self.objective == "mmlm":
            batch["target"] = data_utils.collate_tokens([s["target"] for s in samples], self.pad_idx, left_pad=False)
        elif self.objective == "mrm":
            r = regions["regions"].size(1)
            masked = torch.zeros(len(samples), r, dtype=torch.bool)
            for i, s in enumerate(samples):
                masked[i, : len(s["masked_regions"])] = s["masked_regions"]
            batch["masked_regions"] = masked
            # row-major order, the order of features[masked] in the model
            batch["mrm_feat_target"] = torch.cat([s["mrm_feat_target"] for s in samples])
            batch["mrm_cls_target"] = torch.cat([s["mrm_cls_target"] for s in samples])
        elif self.objective == "vlm":
            batch["vlm_target"] = torch.tensor([s["vlm_target"] for s in samples], dtype=torch.float)
        return batch
