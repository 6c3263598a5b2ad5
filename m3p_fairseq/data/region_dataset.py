"""Regions of one image as model input: features, 5-d spatial vectors, detector classes; padded batches, and
batches of (text, image) rows."""
import numpy as np
import torch
from fairseq.data import data_utils

from .region_store import RegionStore, spatial_features
from .sized import SizedDataset


class RegionDataset(SizedDataset):
    """Item ``i`` is the image at row ``rows[i]`` of a RegionStore, cut to ``max_regions``.

    Sizes (region counts) come from the store's in-memory table: batching never opens a file.
    """

    def __init__(self, store: RegionStore, rows=None, max_regions=100):
        self.store = store
        self.rows = np.arange(len(store), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.max_regions = max_regions
        self._sizes = np.minimum(store.num_regions[self.rows], max_regions).astype(np.int64)

    def __len__(self):
        return len(self.rows)

    def image_id(self, index):
        return self.store.image_ids[self.rows[index]]

    def __getitem__(self, index):
        return self.get_row(int(self.rows[index]))

    def get_row(self, row):
        item = self.store.get(row)
        n = min(len(item["features"]), self.max_regions)  # detectors list their boxes by confidence
        return {
            "features": torch.from_numpy(item["features"][:n]),
            "boxes": torch.from_numpy(spatial_features(item["boxes"][:n], item["width"], item["height"])),
            "classes": torch.from_numpy(item["classes"][:n]),
        }

    def collater(self, samples):
        return collate_regions(samples)


def collate_regions(images, pad_len=None):
    """Pad a list of region dicts into batch tensors; ``region_padding_mask`` is True on padding."""
    bsz = len(images)
    max_len = max(len(im["features"]) for im in images) if pad_len is None else pad_len
    dim = images[0]["features"].size(1)
    feats = images[0]["features"].new_zeros(bsz, max_len, dim)
    boxes = images[0]["boxes"].new_zeros(bsz, max_len, 5)
    classes = torch.full((bsz, max_len), -100, dtype=torch.long)
    pad = torch.ones(bsz, max_len, dtype=torch.bool)
    for i, im in enumerate(images):
        n = len(im["features"])
        feats[i, :n] = im["features"]
        boxes[i, :n] = im["boxes"]
        classes[i, :n] = im["classes"]
        pad[i, :n] = False
    return {"regions": feats, "region_boxes": boxes, "region_padding_mask": pad, "region_classes": classes}


def text_image_input(texts, images, pad_idx):
    """A batch's ``net_input`` of rows each pairing ``texts[i]`` (1-D tokens) with ``images[i]`` (region dicts)."""
    regions = collate_regions(images)
    return {
        "src_tokens": data_utils.collate_tokens(texts, pad_idx, left_pad=False),
        "src_lengths": torch.LongTensor([len(t) for t in texts]),
        "regions": regions["regions"],
        "region_boxes": regions["region_boxes"],
        "region_padding_mask": regions["region_padding_mask"],
    }
