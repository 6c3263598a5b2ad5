"""The region store's per-image table (RegionIndex): the same rows, counts and errors as the
per-image Python lookup it replaced, mapped from its file or built from the shards; conversion in
workers and in slices gives the store one process writes; damaged shards end in one line."""
import os
import pickle

import h5py
import numpy as np
import pytest

from m3p_fairseq.data.region_store import (
    RegionDataError,
    RegionShardWriter,
    RegionStore,
    index_path,
    merge_manifests,
    write_manifest,
)
from preprocess.detectors import DetectorInputError, convert, main, merge_main

from .conftest import BIN, run
from .test_import_regions import D as SOURCE_D, _no_leftovers, _tsv_line, write_mmf, write_reference_h5

D, K = 8, 5
TSV_FIELDS = "image_id,image_w,image_h,num_boxes,boxes,features,objects_id"


class ReferenceLookup:
    """The lookup RegionStore had before RegionIndex: ids as Python strings, read shard by shard,
    searched through a sorted unicode array; counts from each shard's offsets."""

    def __init__(self, shard_paths):
        ids, counts = [], []
        for sp in shard_paths:
            with h5py.File(sp, "r") as f:
                ids += [s.decode() if isinstance(s, bytes) else str(s) for s in f["image_ids"][:]]
                counts.append(np.diff(f["offsets"][:]))
        self.ids = np.array(ids, dtype=object)
        self.counts = np.concatenate(counts)
        order = np.argsort(self.ids.astype(str), kind="stable")
        self.sorted_ids, self.sorted_idx = self.ids[order].astype(str), order
        dup = np.nonzero(self.sorted_ids[1:] == self.sorted_ids[:-1])[0]
        self.duplicate = self.sorted_ids[dup[0]] if len(dup) else None

    def row(self, image_id):
        i = np.searchsorted(self.sorted_ids, image_id)
        if i >= len(self.sorted_ids) or self.sorted_ids[i] != image_id:
            return None
        return int(self.sorted_idx[i])


def _image(rng, n, w=50.0, h=40.0):
    x1, y1 = rng.uniform(0, w / 2, n), rng.uniform(0, h / 2, n)
    boxes = np.stack([x1, y1, x1 + w / 4, y1 + h / 4], 1).astype(np.float32)
    return {"features": rng.random((n, D)).astype(np.float32), "boxes": boxes, "classes": rng.integers(0, K, n),
            "width": w, "height": h}


# ids of unequal length, prefixes of each other, non-ASCII, sorted differently from their rows
IDS = [f"img{i}" for i in range(40)] + ["", "a", "ab", "abc" * 9, "z\u00e9", "\u56fe\u7247_7", "img1_", "IMG1"]


def _store(folder, ids=IDS, shards=3, index=True, seed=0):
    rng = np.random.default_rng(seed)
    paths, images = [], {}
    for s in range(shards):
        paths.append(os.path.join(folder, f"train.{s}.h5"))
        with RegionShardWriter(paths[-1], feat_dim=D, num_classes=K) as w:
            for image_id in ids[s::shards]:
                images[image_id] = _image(rng, int(rng.integers(1, 5)))
                w.add(image_id, **images[image_id])
    manifest = os.path.join(folder, "train.json")
    write_manifest(manifest, paths, D, K, index=index)
    return manifest, paths, images


@pytest.mark.parametrize("mapped", [True, False])
def test_rows_counts_and_errors_match_the_python_lookup(tmp_path, mapped):
    manifest, paths, images = _store(str(tmp_path), index=mapped)
    store, ref = RegionStore(manifest), ReferenceLookup(paths)
    assert (store.index.source is not None) == mapped
    assert list(store.image_ids) == list(ref.ids) and len(store) == len(IDS)
    np.testing.assert_array_equal(store.num_regions, ref.counts)
    queries = IDS[::-1] + IDS  # every id, in another order and repeated
    np.testing.assert_array_equal(store.indices_of(queries), [ref.row(q) for q in queries])
    for image_id in IDS:
        row = store.index_of(image_id)
        assert row == ref.row(image_id) and store.image_ids[row] == image_id
        got = store.get(row)
        np.testing.assert_array_equal(got["features"], images[image_id]["features"].astype(np.float16))
        np.testing.assert_array_equal(got["classes"], images[image_id]["classes"])
        assert (got["width"], got["height"]) == (images[image_id]["width"], images[image_id]["height"])
    # missing: longer than every stored id, a prefix or extension of one, a trailing NUL, another type
    for missing in ["nope", "abc" * 9 + "x", "img", "img1__", "img1\x00", "IMG", "abc" * 10, 7]:
        assert ref.row(str(missing)) is None
        with pytest.raises(RegionDataError) as e:
            store.indices_of(["img3", missing, "nope2"], source="captions.ids")
        assert str(e.value) == f"captions.ids: image {str(missing)!r} has no features in {manifest}"
    with pytest.raises(RegionDataError, match=r"^image 'nope' has no features in "):
        store.index_of("nope")
    assert store.indices_of([]).shape == (0,)


def test_duplicate_id_same_error_mapped_or_built(tmp_path):
    ids = ["b", "a", "c", "d", "a", "e", "c"]  # a and c twice, in different shards
    paths = []
    for s, part in enumerate([ids[:3], ids[3:]]):
        paths.append(str(tmp_path / f"s{s}.h5"))
        with RegionShardWriter(paths[-1], feat_dim=D, num_classes=K) as w:
            for image_id in part:
                w.add(image_id, **_image(np.random.default_rng(s), 2))
    assert ReferenceLookup(paths).duplicate == "a"
    manifest = str(tmp_path / "m.json")
    write_manifest(manifest, paths, D, K)  # no index: the reader finds the duplicate
    with pytest.raises(RegionDataError, match=r"m.json: image 'a' appears in more than one place$"):
        RegionStore(manifest)
    with pytest.raises(RegionDataError, match=r"m.json: image 'a' appears in more than one place$"):
        write_manifest(manifest, paths, D, K, index=True)  # nor does a writer index it
    assert not os.path.exists(index_path(manifest))


def test_index_file_is_used_only_while_it_matches_the_shards(tmp_path, caplog):
    manifest, paths, _ = _store(str(tmp_path))
    assert RegionStore(manifest).index.source == index_path(manifest)
    # a shard rewritten with other images: the table is rebuilt from the shards, not trusted
    rng = np.random.default_rng(5)
    with RegionShardWriter(paths[1], feat_dim=D, num_classes=K) as w:
        for image_id in ["new1", "new2"]:
            w.add(image_id, **_image(rng, 3))
    os.utime(paths[1], ns=(1, 1))  # even if the clock had not moved
    store = RegionStore(manifest)
    assert store.index.source is None and "changed after it was written" in caplog.text
    assert store.image_ids[store.index_of("new2")] == "new2"
    assert list(store.image_ids) == list(ReferenceLookup(paths).ids)
    # a manifest over other shards than the index lists
    write_manifest(manifest, paths[:2], D, K)
    assert not os.path.exists(index_path(manifest))  # a manifest without an index removes an old one
    # merging a single manifest writes its index again
    assert merge_manifests(manifest, [manifest]) == len(RegionStore(manifest))
    assert RegionStore(manifest).index.source == index_path(manifest)
    # an index file that is not one: ignored
    open(index_path(manifest), "wb").write(b"garbage")
    assert RegionStore(manifest).index.source is None


def test_mapped_index_pickles_as_its_file_name(tmp_path):
    manifest, _, _ = _store(str(tmp_path), ids=[f"image_{i:06d}" for i in range(3000)])
    mapped = RegionStore(manifest)
    small = pickle.dumps(mapped)
    assert len(small) < 4000  # the 3,000 ids are not in it
    again = pickle.loads(small)
    assert again.index.source == mapped.index.source and again.index_of("image_002999") == 2999
    os.replace(index_path(manifest), index_path(manifest) + ".old")  # the file is gone: arrays travel
    again = pickle.loads(pickle.dumps(mapped))
    assert again.index.source is None and again.index_of("image_002999") == 2999


# ---- conversion in workers and slices ---------------------------------------------------------------

def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        k = int(rng.integers(1, 6))
        x1, y1 = rng.uniform(0, 300, k), rng.uniform(0, 200, k)
        boxes = np.stack([x1, y1, x1 + rng.uniform(1, 300, k), y1 + rng.uniform(1, 200, k)], 1).astype(np.float32)
        probs = rng.dirichlet(np.ones(K + 1), k).astype(np.float32)
        out[f"im{i:03d}"] = {"features": rng.random((k, SOURCE_D), dtype=np.float32), "boxes": boxes, "probs": probs,
                             "objects": probs[:, 1:].argmax(1), "w": 640.0, "h": 480.0}
    return out


def _same_store(a, b):
    sa, sb = RegionStore(a), RegionStore(b)
    assert list(sa.image_ids) == list(sb.image_ids)
    np.testing.assert_array_equal(sa.num_regions, sb.num_regions)
    np.testing.assert_array_equal(sa.image_wh, sb.image_wh)
    for row in range(len(sa)):
        x, y = sa.get(row, with_class_probs=True), sb.get(row, with_class_probs=True)
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    return sa, sb


def _inputs(tmp_path, fmt, images):
    if fmt == "mmf":
        write_mmf(str(tmp_path / "in"), images)
        return [str(tmp_path / "in")], {}
    if fmt == "hdf5":
        write_reference_h5(str(tmp_path / "in.h5"), images)
        return [str(tmp_path / "in.h5")], {}
    items = list(images.items())  # tsv: two files, lines cut anywhere by the byte ranges
    for name, part in (("a.tsv", items[:17]), ("b.tsv", items[17:])):
        (tmp_path / name).write_text("".join(_tsv_line(i, img) for i, img in part))
    return [str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv")], {"tsv_fields": TSV_FIELDS}


@pytest.mark.parametrize("fmt", ["mmf", "hdf5", "tsv"])
def test_workers_write_the_store_one_process_writes(tmp_path, fmt):
    images = _images(41)
    sources, kw = _inputs(tmp_path, fmt, images)
    probs = fmt == "mmf"
    one, two = str(tmp_path / "one" / "train.json"), str(tmp_path / "two" / "train.json")
    assert convert(fmt, sources, one, images_per_shard=6, num_classes=K, progress=False, with_class_probs=probs,
                   **kw) == 41
    assert convert(fmt, sources, two, images_per_shard=6, num_classes=K, progress=False, with_class_probs=probs,
                   workers=3, **kw) == 41
    sa, sb = _same_store(one, two)
    assert list(sa.image_ids) == list(images)  # the input's order
    assert sb.index.source is not None and len(sb.shard_paths) >= 3
    assert sorted(os.listdir(tmp_path / "two")) == sorted([f"train.{j}.h5" for j in range(len(sb.shard_paths))]
                                                          + ["train.index", "train.json"])


def test_slices_merge_into_the_store_one_process_writes(tmp_path):
    images = _images(23)
    sources, kw = _inputs(tmp_path, "tsv", images)
    one = str(tmp_path / "one" / "train.json")
    convert("tsv", sources, one, images_per_shard=4, num_classes=K, progress=False, **kw)
    parts = []
    for k in range(3):  # as three machines would, each its own slice
        parts.append(str(tmp_path / "parts" / f"train.part{k}.json"))
        main(["tsv", *sources, parts[-1], "--tsv-fields", TSV_FIELDS, "--num-classes", str(K),
              "--images-per-shard", "4", "--slice", f"{k}/3", "--workers", "2", "--quiet"])
    merged = str(tmp_path / "train.json")
    with pytest.raises(SystemExit) as e:
        merge_main([merged, parts[2], parts[0]])
    assert "train.json: slice 1/3 missing" in str(e.value) and not os.path.exists(merged)
    with pytest.raises(SystemExit) as e:
        merge_main([merged, parts[0], str(tmp_path / "parts" / "nope.json")])
    assert "nope.json: cannot read the region manifest" in str(e.value) and "\n" not in str(e.value)
    merge_main([merged, parts[2], parts[0], parts[1]])  # any order: slices go in slice order
    _same_store(one, merged)
    assert RegionStore(merged).index.source == index_path(merged)
    with pytest.raises(SystemExit) as e:
        main(["tsv", *sources, parts[0], "--slice", "3/3"])
    assert "expected 0 <= K < N" in str(e.value)


def test_first_bad_image_in_input_order_wins_across_workers(tmp_path):
    images = _images(30)
    images["im004"]["features"][0, 0] = np.nan  # in the first worker's range
    images["im025"]["boxes"][0, 2] = 5000.0  # in the last one's
    sources, _ = _inputs(tmp_path, "mmf", images)
    out = tmp_path / "out"
    with pytest.raises(DetectorInputError) as e:
        convert("mmf", sources, str(out / "train.json"), images_per_shard=2, num_classes=K, progress=False, workers=3)
    assert "im004.npy: image 'im004': features contain NaN or Inf" in str(e.value)
    assert _no_leftovers(out) == []


def test_duplicate_across_workers_stops_and_writes_nothing(tmp_path):
    images = _images(12)
    items = list(images.items())
    lines = [_tsv_line(i, img) for i, img in items] + [_tsv_line("im001", items[1][1])]
    (tmp_path / "in.tsv").write_text("".join(lines))
    out = tmp_path / "out"
    with pytest.raises(DetectorInputError, match="image 'im001' appears"):
        convert("tsv", [str(tmp_path / "in.tsv")], str(out / "train.json"), num_classes=K, progress=False,
                workers=2, tsv_fields=TSV_FIELDS)
    assert _no_leftovers(out) == []
    # a bad line in the second worker's range is named by its line number in the file
    lines[9] = lines[9].replace("\t640\t", "\tx\t", 1)
    (tmp_path / "in.tsv").write_text("".join(lines[:12]))
    with pytest.raises(DetectorInputError, match=r"in.tsv: line 10: image 'im009': num_boxes/image_w/image_h"):
        convert("tsv", [str(tmp_path / "in.tsv")], str(out / "train.json"), num_classes=K, progress=False,
                workers=2, tsv_fields=TSV_FIELDS)


# ---- damaged shards ----------------------------------------------------------------------------

def _damage_chunks(path, dataset="features"):
    """Change bytes inside every stored chunk of ``dataset`` (the file keeps its size)."""
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        spans = [(info.byte_offset, info.size) for info in (ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks()))]
    with open(path, "r+b") as fh:
        for offset, size in spans:
            fh.seek(offset + size // 3)
            fh.write(b"\x7b\x7c\x7d")


def test_damaged_or_truncated_shard_is_one_line_naming_shard_and_image(tmp_path):
    manifest, paths, images = _store(str(tmp_path), ids=[f"im{i}" for i in range(300)], shards=2)
    _damage_chunks(paths[0])
    store = RegionStore(manifest)  # ids and offsets are intact: it opens
    with pytest.raises(RegionDataError) as e:
        store.get(store.index_of("im0"))
    assert str(e.value).startswith(f"{paths[0]}: image 'im0' cannot be read (") and "\n" not in str(e.value)
    # truncated while open, inside the last image's features
    store = RegionStore(manifest)
    store.get(store.index_of("im1"))
    with h5py.File(paths[1], "r") as f:
        last = f["features"].id.get_chunk_info(f["features"].id.get_num_chunks() - 1)
    with open(paths[1], "r+b") as fh:
        fh.truncate(last.byte_offset + 1)
    with pytest.raises(RegionDataError) as e:
        store.get(store.index_of("im299"))
    assert str(e.value).startswith(f"{paths[1]}: image 'im299' cannot be read") and "\n" not in str(e.value)


def test_worker_error_comes_back_as_its_one_line():
    # what torch's DataLoader makes of an exception raised in a worker process
    wrapped = ("Caught RegionDataError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 3, in f\n    raise RegionDataError(...)\n'
               "m3p_fairseq.data.region_store.RegionDataError: s.h5: image 'b' cannot be read (checksum)\n")
    assert str(RegionDataError(wrapped)) == "s.h5: image 'b' cannot be read (checksum)"
    assert str(RegionDataError("s.h5: Caught nothing")) == "s.h5: Caught nothing"


@pytest.mark.parametrize("workers", [0, 2])
def test_fairseq_train_on_a_damaged_shard_ends_in_one_line(tiny_world, tmp_path, workers):
    import shutil

    data = str(tmp_path / "data")
    shutil.copytree(tiny_world["data"], data)
    store = RegionStore(os.path.join(data, "regions", "train.json"))
    for sp in store.shard_paths:
        _damage_chunks(sp)
    res = run([os.path.join(BIN, "fairseq-train"), data, "--user-dir", "m3p_fairseq", "--task", "multitask_multimodal",
               "--arch", "m3p_tiny", "--criterion", "m3p_pretrain", "--objectives", "mmlm,mrm", "--cpu",
               "--optimizer", "adam", "--lr", "1e-3", "--max-update", "20", "--batch-size", "4",
               "--num-workers", str(workers), "--save-dir", str(tmp_path / "ck"), "--disable-validation"],
              check=False, timeout=300)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert last.startswith("error: ") and ".h5: image '" in last and "cannot be read" in last, last
