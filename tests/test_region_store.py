import json
import os

import h5py
import numpy as np
import pytest
import torch

from m3p_fairseq.data.region_dataset import RegionDataset, collate_regions
from m3p_fairseq.data.region_store import (
    RegionDataError,
    RegionShardWriter,
    RegionStore,
    spatial_features,
    write_manifest,
)


def _image(rng, n, dim=16, w=100.0, h=80.0):
    feats = rng.random((n, dim)).astype(np.float32)
    x1 = rng.uniform(0, w / 2, n)
    y1 = rng.uniform(0, h / 2, n)
    boxes = np.stack([x1, y1, x1 + w / 4, y1 + h / 4], 1).astype(np.float32)
    return {"features": feats, "boxes": boxes, "classes": rng.integers(0, 5, n), "width": w, "height": h}


def _store(tmp_path, n_images=7, shards=2, dim=16):
    rng = np.random.default_rng(0)
    paths, images = [], {}
    for s in range(shards):
        p = str(tmp_path / f"train.{s}.h5")
        with RegionShardWriter(p, feat_dim=dim, num_classes=5) as w:
            for i in range(s, n_images, shards):
                im = _image(rng, int(rng.integers(1, 6)), dim)
                w.add(f"img{i}", **im)
                images[f"img{i}"] = im
        paths.append(p)
    manifest = str(tmp_path / "train.json")
    write_manifest(manifest, paths, dim, 5)
    return manifest, images


def test_round_trip_across_shards(tmp_path):
    manifest, images = _store(tmp_path)
    store = RegionStore(manifest)
    assert len(store) == len(images) and store.feat_dim == 16 and store.num_classes == 5
    for image_id, im in images.items():
        got = store.get(store.index_of(image_id))
        np.testing.assert_allclose(got["features"], im["features"].astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(got["boxes"], im["boxes"])
        np.testing.assert_array_equal(got["classes"], im["classes"])
        assert store.num_regions[store.index_of(image_id)] == len(im["features"])
    doc = json.load(open(manifest))
    assert [s["path"] for s in doc["shards"]] == ["train.0.h5", "train.1.h5"]  # relative to the manifest


def test_cache_gives_the_same_images_and_keeps_to_its_size(tmp_path):
    manifest, images = _store(tmp_path, n_images=9)
    plain = RegionStore(manifest)
    one_image = 5 * 16 * 2 + 5 * 4 * 4 + 5 * 4  # the largest image as stored: float16 features, boxes, classes
    cached = RegionStore(manifest, cache_mb=3 * one_image / (1 << 20))
    order = [0, 1, 2, 0, 3, 4, 1, 8, 8, 2, 5]
    for i in order:
        a, b = plain.get(i), cached.get(i)
        assert a.keys() == b.keys()
        for k in ("features", "boxes", "classes"):
            np.testing.assert_array_equal(a[k], b[k])
            assert a[k].dtype == b[k].dtype
        assert cached._cached_bytes <= cached.cache_bytes
    recency = list(dict.fromkeys(reversed(order)))[::-1]  # least recently used first
    kept = list(cached._cache)
    assert len(kept) >= 3 and kept == recency[-len(kept):]  # the most recent ones, the oldest dropped
    assert 0 not in kept
    got = cached.get(5)
    got["features"][:] = -1  # a caller's changes must not reach the cache
    np.testing.assert_array_equal(cached.get(5)["features"], plain.get(5)["features"])
    # a worker process gets an empty cache, not a copy
    import pickle
    assert len(pickle.loads(pickle.dumps(cached))._cache) == 0


def test_region_counts_need_no_file_access(tmp_path):
    manifest, images = _store(tmp_path)
    store = RegionStore(manifest)
    ds = RegionDataset(store, max_regions=3)
    assert store._handles == {}  # nothing opened by building the dataset and its sizes
    assert list(ds.sizes) == [min(len(images[i]["features"]), 3) for i in store.image_ids]
    item = ds[0]
    assert item["features"].shape[0] == ds.sizes[0] and item["boxes"].shape[1] == 5


def test_collate_pads_and_masks(tmp_path):
    manifest, _ = _store(tmp_path)
    ds = RegionDataset(RegionStore(manifest))
    batch = collate_regions([ds[i] for i in range(4)])
    n = [len(ds[i]["features"]) for i in range(4)]
    assert batch["regions"].shape == (4, max(n), 16)
    assert batch["region_padding_mask"].sum().item() == 4 * max(n) - sum(n)
    assert torch.all(batch["regions"][batch["region_padding_mask"]] == 0)


def test_spatial_features():
    b = spatial_features(np.array([[10, 20, 60, 60]], np.float32), 100.0, 80.0)
    np.testing.assert_allclose(b[0], [0.1, 0.25, 0.6, 0.75, 0.5 * 0.5], rtol=1e-6)


def test_writer_is_atomic(tmp_path):
    p = str(tmp_path / "x.h5")
    with pytest.raises(RegionDataError):
        with RegionShardWriter(p, feat_dim=4, num_classes=2) as w:
            w.add("a", np.ones((2, 4)), [[0, 0, 1, 1]] * 2, [0, 1], 10, 10)
            w.add("b", np.full((1, 4), np.nan), [[0, 0, 1, 1]], [0], 10, 10)
    assert not os.path.exists(p) and not os.path.exists(p + ".tmp")


@pytest.mark.parametrize("kwargs,message", [
    ({"features": np.ones((2, 5))}, "expected (regions, 4)"),
    ({"features": np.full((2, 4), np.inf)}, "NaN or Inf"),
    ({"features": np.ones((0, 4)), "boxes": np.zeros((0, 4)), "classes": []}, "zero regions"),
    ({"boxes": [[0, 0, 50, 5], [0, 0, 1, 1]]}, "outside"),
    ({"classes": [0, 7]}, "detector class"),
])
def test_writer_rejects_bad_images(tmp_path, kwargs, message):
    im = {"features": np.ones((2, 4)), "boxes": [[0, 0, 1, 1], [1, 1, 2, 2]], "classes": [0, 1],
          "width": 10, "height": 10}
    im.update(kwargs)
    with pytest.raises(RegionDataError) as e:
        with RegionShardWriter(str(tmp_path / "bad.h5"), feat_dim=4, num_classes=2) as w:
            w.add("img42", **im)
    assert "img42" in str(e.value) and "bad.h5" in str(e.value) and message in str(e.value)


def test_reader_errors_name_file_and_id(tmp_path):
    manifest, _ = _store(tmp_path)
    store = RegionStore(manifest)
    with pytest.raises(RegionDataError, match=r"captions.ids: image 'nope' has no features"):
        store.index_of("nope", source="captions.ids")
    # NaN written behind the writer's back is caught on read, naming the image
    with h5py.File(str(tmp_path / "train.0.h5"), "r+") as f:
        f["features"][0, 0] = np.nan
    store = RegionStore(manifest)
    with pytest.raises(RegionDataError, match="img0.*NaN"):
        store.get(store.index_of("img0"))


def test_reader_rejects_missing_keys_and_truncation(tmp_path):
    manifest, _ = _store(tmp_path)
    with h5py.File(str(tmp_path / "train.1.h5"), "r+") as f:
        del f["boxes"]
    with pytest.raises(RegionDataError, match="train.1.h5: region shard lacks boxes"):
        RegionStore(manifest)
    manifest, _ = _store(tmp_path)
    path = str(tmp_path / "train.0.h5")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(RegionDataError, match="train.0.h5"):
        RegionStore(manifest)


def test_mismatched_dims_across_shards(tmp_path):
    rng = np.random.default_rng(1)
    a, b = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    with RegionShardWriter(a, feat_dim=8, num_classes=5) as w:
        w.add("x", **_image(rng, 2, 8))
    with RegionShardWriter(b, feat_dim=6, num_classes=5) as w:
        w.add("y", **_image(rng, 2, 6))
    m = str(tmp_path / "m.json")
    write_manifest(m, [a, b], 8, 5)
    with pytest.raises(RegionDataError, match="b.h5: features are 6-d"):
        RegionStore(m)
