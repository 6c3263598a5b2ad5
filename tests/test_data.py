"""Masking rates, language sampling, VLM negatives and the one-objective-per-update iterator."""
from collections import Counter

import numpy as np
import pytest
import torch
from fairseq.data import Dictionary, ListDataset

from m3p_fairseq.data.image_caption_dataset import ImageCaptionDataset, mask_regions
from m3p_fairseq.data.multitask import MultitaskDataset, alpha_sampling_probs, resample_to_probs
from m3p_fairseq.data.region_dataset import RegionDataset
from m3p_fairseq.data.region_store import RegionShardWriter, RegionStore, write_manifest
from fairseq.data import data_utils


def test_token_masking_rates_match_the_paper(task):
    """15% of tokens selected; of those 80% <mask>, 10% random, 10% unchanged (within 1%)."""
    t, _ = task
    d = t.dictionary
    rng = np.random.default_rng(0)
    vocab = np.arange(d.nspecial, len(d) - 1)
    seqs = [torch.from_numpy(rng.choice(vocab, 100)) for _ in range(3000)]
    src, tgt = t.apply_mask(ListDataset(seqs, np.full(len(seqs), 100)), seed=5)
    n = selected = masked = unchanged = random = 0
    for i in range(len(seqs)):
        s, g, orig = src[i], tgt[i], seqs[i]
        sel = g.ne(d.pad())
        n += len(orig)
        selected += int(sel.sum())
        masked += int((s[sel] == t.mask_idx).sum())
        unchanged += int((s[sel] == orig[sel]).sum())
        random += int(((s[sel] != t.mask_idx) & (s[sel] != orig[sel])).sum())
    assert abs(selected / n - 0.15) < 0.01
    # a random replacement can draw the original token (1 / vocab): count it as random
    p_same = 1.0 / len(vocab)
    assert abs(masked / selected - 0.8) < 0.01
    assert abs(random / selected - 0.1 * (1 - p_same)) < 0.01
    assert abs(unchanged / selected - (0.1 + 0.1 * p_same)) < 0.01


def test_masking_is_deterministic_per_epoch_and_index(task):
    t, _ = task
    seqs = [torch.arange(4, 60) for _ in range(20)]
    src, _ = t.apply_mask(ListDataset(seqs, np.full(20, 56)), seed=1)
    src.set_epoch(1)
    a = src[3].clone()
    [src[i] for i in range(5, 20)]  # push index 3 out of the small LRU cache apply_mask adds
    assert torch.equal(a, src[3])
    src.set_epoch(2)
    [src[i] for i in range(5, 20)]
    assert not torch.equal(a, src[3])


def test_region_masking_rates():
    """15% of regions masked; 90% of the masked ones zeroed, 10% kept (within 1%)."""
    total = masked = zeroed = 0
    for i in range(20000):
        with data_utils.numpy_seed(7, 1, i):
            m, z = mask_regions(int(10 + i % 90), 0.15, 0.9)
        assert not (z & ~m).any()
        total += len(m)
        masked += int(m.sum())
        zeroed += int(z.sum())
    assert abs(masked / total - 0.15) < 0.01
    assert abs(zeroed / masked - 0.9) < 0.01


def test_alpha_sampling_probabilities():
    sizes = [100000, 10000, 1000]
    p = alpha_sampling_probs(sizes, 0.3)
    q = np.array(sizes) / sum(sizes)
    np.testing.assert_allclose(p, q ** 0.3 / (q ** 0.3).sum())
    # empirical: tag every language's items with its id and count over a resampled epoch
    datasets = [ListDataset([lang] * n, np.ones(n)) for lang, n in enumerate(sizes)]
    resampled = resample_to_probs(datasets, p, seed=1, epoch=1)
    counts = np.array([len(r) for r in resampled], dtype=float)
    np.testing.assert_allclose(counts / counts.sum(), p, atol=0.01)
    assert all(all(r[i] == lang for i in range(0, len(r), 97)) for lang, r in enumerate(resampled))


def _tiny_pairs(tmp_path, objective, n_images=12, captions_per_image=2):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "r.h5")
    with RegionShardWriter(path, feat_dim=8, num_classes=4) as w:
        for i in range(n_images):
            n = 3 + i % 4
            w.add(f"im{i}", rng.random((n, 8)) + 0.1, [[0, 0, 5, 5]] * n, rng.integers(0, 4, n), 10, 10)
    store = RegionStore(path)
    rows = np.repeat(np.arange(n_images), captions_per_image)
    caps = ListDataset([torch.tensor([0, 10 + int(r), 2]) for r in rows], np.full(len(rows), 3))
    return ImageCaptionDataset(caps, rows, RegionDataset(store), pad_idx=1, objective=objective, seed=3)


def test_vlm_negatives(tmp_path):
    ds = _tiny_pairs(tmp_path, "vlm", n_images=40)
    labels, text_neg, image_neg = [], 0, 0
    for i in range(len(ds)):
        item = ds[i]
        labels.append(item["vlm_target"])
        own_row = ds.image_rows[i]
        text_row = int(item["source"][1]) - 10  # the caption encodes its image row
        same_image = torch.equal(item["image"]["features"], ds.regions.get_row(int(own_row))["features"])
        if item["vlm_target"] == 1.0:
            assert text_row == own_row and same_image
        else:
            # exactly one side replaced, and by another image's
            assert (text_row != own_row) != (not same_image)
            text_neg += text_row != own_row
            image_neg += not same_image
    assert 0.3 < np.mean(labels) < 0.7 and text_neg > 5 and image_neg > 5


def test_mrm_batch_targets(tmp_path):
    ds = _tiny_pairs(tmp_path, "mrm")
    batch = ds.collater([ds[i] for i in range(len(ds))])
    m = batch["masked_regions"]
    assert int(m.sum()) == len(batch["mrm_feat_target"]) == len(batch["mrm_cls_target"])
    assert not (m & batch["net_input"]["region_padding_mask"]).any()
    # targets are the raw features of the masked regions, in row-major order
    raw = torch.cat([ds.regions.get_row(int(ds.image_rows[i]))["features"][ds[i]["masked_regions"]]
                     for i in range(len(ds))])
    assert torch.equal(raw, batch["mrm_feat_target"])


def test_one_objective_per_update_across_workers_and_micro_batches(task):
    """With 2 workers and update_freq 2, every update's 4 micro-batches share one objective."""
    t, _ = task
    t.cfg.update_freq = [2]
    t.load_dataset("train")
    ds = t.datasets["train"]
    objectives = []
    for shard in range(2):
        itr = t.get_batch_iterator(ds, max_sentences=8, seed=1, num_shards=2, shard_id=shard, epoch=1)
        objectives.append([b["objective"] for b in itr.next_epoch_itr(shuffle=True) if b])
    a, b = objectives
    assert a == b and len(a) > 8
    for u in range(0, len(a) - 1, 2):
        assert a[u] == a[u + 1]
    assert set(a) == {"xmlm", "mmlm", "mrm", "vlm"}
    t.cfg.update_freq = [1]


def test_objective_ratios(task):
    t, _ = task
    old = t.ratios
    t.ratios = [1.0, 1.0, 1.0, 3.0]
    t.load_dataset("train")
    ds = t.datasets["train"]
    counts = Counter(b["objective"] for b in t.get_batch_iterator(ds, max_sentences=4, seed=1, epoch=1)
                     .next_epoch_itr(shuffle=True) if b)
    total = sum(counts.values())
    assert abs(counts["vlm"] / total - 0.5) < 0.02 and abs(counts["xmlm"] / total - 1 / 6) < 0.02
    t.ratios = old
