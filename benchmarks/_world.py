"""A data folder for the benchmarks: the embedded world's text and captions, with its region stores
rewritten at a detector's size (2048-d features, a fixed number of regions per image; the world
itself draws only a handful per image, which would make HDF5 reads look cheaper than on real data).
Built once per folder and reused."""
import glob
import json
import os
import shutil

import numpy as np

from _common import ROOT  # noqa: F401  (puts the repository on sys.path)


def bench_data(folder, train_images=400, test_images=100, regions=36, feat_dim=2048, seed=1, caption_pieces=None):
    """``caption_pieces``: each caption lengthened to that many sentencepiece pieces (the captions that
    follow it appended, cut at a piece): the paper's 128-token text with ``caption_pieces`` 126."""
    stamp = os.path.join(folder, "bench.json")
    want = {"train_images": train_images, "test_images": test_images, "regions": regions, "feat_dim": feat_dim,
            "seed": seed}
    if caption_pieces:
        want["caption_pieces"] = caption_pieces
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
    if caption_pieces:
        _lengthen_captions(world, data, caption_pieces)
    json.dump(want, open(stamp, "w"))
    return data


def _lengthen_captions(world, data, pieces):
    """Rewrites the binarized captions of every language and split at ``pieces`` pieces each."""
    import sentencepiece as spm

    from preprocess.binarize import binarize
    from preprocess.make_world import raw_captions

    sp = spm.SentencePieceProcessor(model_file=os.path.join(data, "sentencepiece.bpe.model"))
    for lang_dir in sorted(glob.glob(os.path.join(data, "captions", "*"))):
        lang, splits = os.path.basename(lang_dir), {}
        for split in ("train", "valid", "test"):
            raw = raw_captions(world, split, lang)
            if not os.path.exists(raw):
                continue
            lines = [sp.encode(line.strip(), out_type=str) for line in open(raw, encoding="utf-8")]
            long = []
            for i in range(len(lines)):
                p, j = [], i
                while len(p) < pieces:
                    p += lines[j % len(lines)]
                    j += 1
                long.append(sp.decode_pieces(p[:pieces]))
            splits[split] = os.path.join(world, "raw", "long", f"{split}.{lang}.txt")
            os.makedirs(os.path.dirname(splits[split]), exist_ok=True)
            with open(splits[split], "w", encoding="utf-8") as f:
                f.write("\n".join(long) + "\n")
            shutil.copy(raw_captions(world, split, lang, "ids"), splits[split][: -len("txt")] + "ids")
        binarize(os.path.join(data, "sentencepiece.bpe.model"), os.path.join(data, "dict.txt"), lang_dir, splits,
                 require_ids=True, max_tokens=pieces + 1)  # (decoded pieces may re-encode a little differently)


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
