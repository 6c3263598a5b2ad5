"""A data folder for the benchmarks: the embedded world's text and captions, with its region stores
rewritten at a detector's size (2048-d features, a fixed number of regions per image; the world
itself draws only a handful per image, which would make HDF5 reads look cheaper than on real data).
Built once per folder and reused."""
import glob
import json
import os

import numpy as np

from _common import ROOT  # noqa: F401  (puts the repository on sys.path)


def bench_data(folder, train_images=400, test_images=100, regions=36, feat_dim=2048, seed=1):
    stamp = os.path.join(folder, "bench.json")
    want = {"train_images": train_images, "test_images": test_images, "regions": regions, "feat_dim": feat_dim,
            "seed": seed}
    if os.path.exists(stamp) and json.load(open(stamp)) == want:
        return os.path.join(folder, "data")
    from preprocess.make_world import main as make_world
    from preprocess.prepare_world import prepare

    world, data = os.path.join(folder, "world"), os.path.join(folder, "data")
    make_world([world, "--seed", str(seed), "--feat-dim", "16", "--train-images", str(train_images),
                "--valid-images", "16", "--test-images", str(test_images), "--text-sentences", "3000", "--quiet"])
    prepare(world, data, vocab_size=1000, progress=False)
    for manifest in glob.glob(os.path.join(data, "regions", "*.json")):
        _resize_store(manifest, regions, feat_dim, seed)
    json.dump(want, open(stamp, "w"))
    return data


def _resize_store(manifest, regions, feat_dim, seed):
    """Same image ids and sizes, ``regions`` random detector outputs each, one shard."""
    from m3p_fairseq.data.region_store import RegionShardWriter, RegionStore, write_manifest

    store = RegionStore(manifest)
    ids, wh, num_classes = list(store.image_ids), store.image_wh.copy(), store.num_classes
    for sp in store.shard_paths:
        os.remove(sp)
    rng = np.random.default_rng(seed)
    shard = manifest[: -len(".json")] + ".bench.h5"
    with RegionShardWriter(shard, feat_dim=feat_dim, num_classes=num_classes, max_regions=max(100, regions)) as w:
        for image_id, (width, height) in zip(ids, wh):
            x1 = rng.uniform(0, width * 0.7, regions)
            y1 = rng.uniform(0, height * 0.7, regions)
            boxes = np.stack([x1, y1, x1 + rng.uniform(1, width * 0.3, regions),
                              y1 + rng.uniform(1, height * 0.3, regions)], axis=1)
            feats = np.abs(rng.standard_normal((regions, feat_dim), dtype=np.float32))
            w.add(image_id, feats, boxes, rng.integers(0, num_classes, regions), width, height)
    write_manifest(manifest, [shard], feat_dim, num_classes)
