"""Detector outputs -> region store: each source format round-trips, bad images stop the run with one line.

Fixtures are written here in each tool's real on-disk format (MMF/VMB npy + _info.npy, the
bottom-up-attention TSV with base64 fields, per-image npz, the M3P reference HDF5).
"""
import base64
import os

import h5py
import numpy as np
import pytest

from m3p_fairseq.data.region_store import RegionStore
from preprocess.detectors import DetectorInputError, convert, load_info_npy, main

D, K = 16, 5


def _image(seed, n, w=640.0, h=480.0):
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(0, w / 2, n), rng.uniform(0, h / 2, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, w / 2, n), y1 + rng.uniform(1, h / 2, n)], 1).astype(np.float32)
    probs = rng.dirichlet(np.ones(K + 1), n).astype(np.float32)  # background first, as VG detectors
    return {"features": rng.random((n, D), dtype=np.float32) * 3, "boxes": boxes, "probs": probs,
            "objects": probs[:, 1:].argmax(1), "w": w, "h": h}


IMAGES = {"img_a": _image(0, 3), "img_b": _image(1, 7, 300.0, 200.0), "img_c": _image(2, 1)}


def _check_round_trip(manifest, images=IMAGES, probs=False):
    store = RegionStore(manifest)
    assert sorted(store.image_ids) == sorted(images)
    for image_id, img in images.items():
        got = store.get(store.index_of(image_id), with_class_probs=probs)
        np.testing.assert_allclose(got["features"], img["features"], rtol=1e-3, atol=1e-3)  # stored as float16
        np.testing.assert_allclose(got["boxes"], img["boxes"], rtol=1e-6)
        np.testing.assert_array_equal(got["classes"], img["objects"])
        assert (got["width"], got["height"]) == (img["w"], img["h"])
        if probs:
            np.testing.assert_allclose(got["class_probs"], img["probs"][:, 1:], atol=1e-3)
    return store


def _no_leftovers(folder):
    """What a refused conversion left in the manifest's folder (a folder it had to create is gone too)."""
    return [n for n in os.listdir(folder) if n.endswith((".h5", ".json", ".index")) or n.startswith(".tmp-")] \
        if os.path.exists(folder) else []


def write_mmf(folder, images=IMAGES):
    os.makedirs(folder, exist_ok=True)
    for image_id, img in images.items():
        np.save(os.path.join(folder, f"{image_id}.npy"), img["features"])
        info = {"image_id": image_id, "bbox": img["boxes"], "num_boxes": np.int64(len(img["boxes"])),
                "objects": img["objects"], "cls_prob": img["probs"], "image_width": int(img["w"]),
                "image_height": np.float64(img["h"])}
        np.save(os.path.join(folder, f"{image_id}_info.npy"), info)


def test_mmf_round_trip_with_shards(tmp_path):
    write_mmf(str(tmp_path / "feats"))
    manifest = str(tmp_path / "regions" / "train.json")
    assert convert("mmf", [str(tmp_path / "feats")], manifest, images_per_shard=2, with_class_probs=True,
                   num_classes=K, progress=False) == 3
    store = _check_round_trip(manifest, probs=True)
    assert len(store.shard_paths) == 2 and store.feat_dim == D and store.num_classes == K
    assert sorted(os.listdir(tmp_path / "regions")) == ["train.0.h5", "train.1.h5", "train.index", "train.json"]
    assert store.index.source == str(tmp_path / "regions" / "train.index")  # mapped, not rebuilt


def test_crafted_info_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    write_mmf(str(tmp_path / "feats"), {"img_a": IMAGES["img_a"]})
    np.save(str(tmp_path / "feats" / "img_a_info.npy"), np.array(Evil(), dtype=object), allow_pickle=True)
    with pytest.raises(DetectorInputError) as e:
        load_info_npy(str(tmp_path / "feats" / "img_a_info.npy"))
    assert "is not allowed" in str(e.value) and "img_a_info.npy" in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["mmf", str(tmp_path / "feats"), str(tmp_path / "out" / "train.json"), "--quiet"])
    assert "is not allowed" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()
    assert _no_leftovers(tmp_path / "out") == []


def _tsv_line(image_id, img, with_objects=True):
    b64 = lambda a: base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()  # noqa: E731
    fields = [image_id, str(int(img["w"])), str(int(img["h"])), str(len(img["boxes"])), b64(img["boxes"]),
              b64(img["features"])]
    if with_objects:
        fields.append(b64(img["objects"].astype(np.int64)))
    return "\t".join(fields) + "\n"


def test_tsv_round_trip_with_long_lines(tmp_path):
    images = dict(IMAGES)
    big = _image(3, 100)
    big["features"] = np.random.default_rng(3).random((100, D), dtype=np.float32)
    images["img_big"] = big
    paths = [tmp_path / "a.tsv", tmp_path / "b.tsv"]
    items = list(images.items())
    paths[0].write_text("".join(_tsv_line(i, img) for i, img in items[:2]))
    paths[1].write_text("".join(_tsv_line(i, img) for i, img in items[2:]))
    manifest = str(tmp_path / "regions" / "train.json")
    convert("tsv", [str(p) for p in paths], manifest, num_classes=K, progress=False,
            tsv_fields="image_id,image_w,image_h,num_boxes,boxes,features,objects_id")
    _check_round_trip(manifest, images)

    # a line longer than csv's default field limit (128 kB) still reads
    wide = _image(4, 100)
    wide["features"] = np.random.default_rng(4).random((100, 512), dtype=np.float32)
    (tmp_path / "wide.tsv").write_text(_tsv_line("wide", wide))
    assert len(_tsv_line("wide", wide)) > 131072
    convert("tsv", [str(tmp_path / "wide.tsv")], str(tmp_path / "wide" / "x.json"), num_classes=K, progress=False,
            tsv_fields="image_id,image_w,image_h,num_boxes,boxes,features,objects_id")

    # the original 6-field TSV has no classes: refused with the line named
    (tmp_path / "noclass.tsv").write_text(_tsv_line("img_a", IMAGES["img_a"], with_objects=False))
    with pytest.raises(DetectorInputError, match=r"noclass.tsv: line 1: image 'img_a': no detector classes"):
        convert("tsv", [str(tmp_path / "noclass.tsv")], str(tmp_path / "n" / "x.json"), num_classes=K, progress=False)


def test_tsv_byte_order_mark_and_bytes_not_utf8(tmp_path):
    fields = "image_id,image_w,image_h,num_boxes,boxes,features,objects_id"
    lines = [_tsv_line(i, img) for i, img in IMAGES.items()]
    # saved by a Windows tool: the byte-order mark is not part of the first image id
    (tmp_path / "bom.tsv").write_bytes(b"\xef\xbb\xbf" + "".join(lines).encode("utf-8"))
    manifest = str(tmp_path / "regions" / "train.json")
    convert("tsv", [str(tmp_path / "bom.tsv")], manifest, num_classes=K, progress=False, tsv_fields=fields)
    _check_round_trip(manifest)
    # a byte that is not UTF-8 (a damaged or binary file): one line naming the file and the line
    (tmp_path / "bad.tsv").write_bytes(lines[0].encode("utf-8") + b"img_x\t\xff" + lines[1].encode("utf-8"))
    with pytest.raises(DetectorInputError, match=r"bad.tsv: line 2: not UTF-8 \(byte 7 of the line is b'\\xff'"):
        convert("tsv", [str(tmp_path / "bad.tsv")], str(tmp_path / "b" / "x.json"), num_classes=K, progress=False,
                tsv_fields=fields)
    assert not os.path.exists(tmp_path / "b" / "x.json")


def test_npz_round_trip_never_unpickles(tmp_path):
    folder = tmp_path / "npz"
    folder.mkdir()
    for image_id, img in IMAGES.items():
        # an object entry like extractors' "info" dict is present but never read (np.load without pickles)
        np.savez(folder / f"{image_id}.npz", x=img["features"], bbox=img["boxes"], objects=img["objects"],
                 image_w=img["w"], image_h=img["h"], num_bbox=len(img["boxes"]),
                 info=np.array({"objects_conf": [0.9]}, dtype=object))
    manifest = str(tmp_path / "regions" / "valid.json")
    convert("npz", [str(folder)], manifest, num_classes=K, progress=False)
    _check_round_trip(manifest)


def write_reference_h5(path, images=IMAGES, hw=True, rows=8):
    ids = list(images)
    with h5py.File(path, "w") as f:
        f.create_dataset("image_id", data=np.array([i.encode() for i in ids]))
        f.create_dataset("wh", data=np.array([[images[i]["h"], images[i]["w"]] if hw else [images[i]["w"], images[i]["h"]]
                                              for i in ids], dtype=np.float32))
        f.create_dataset("num_boxes", data=np.array([len(images[i]["boxes"]) for i in ids]))
        bbox, feats, objs = np.zeros((len(ids), rows, 4), np.float32), np.zeros((len(ids), rows, D), np.float32), \
            np.zeros((len(ids), rows), np.int64)
        for j, i in enumerate(ids):
            n = len(images[i]["boxes"])
            bbox[j, :n], feats[j, :n], objs[j, :n] = images[i]["boxes"], images[i]["features"], images[i]["objects"]
            bbox[j, n:] = -5  # padding rows hold junk the converter must not read
        f.create_dataset("bbox", data=bbox)
        f.create_dataset("features", data=feats)
        f.create_dataset("objects", data=objs)


def test_reference_hdf5_round_trip(tmp_path):
    write_reference_h5(str(tmp_path / "coco_val.h5"))
    convert("hdf5", [str(tmp_path / "coco_val.h5")], str(tmp_path / "regions" / "valid.json"), num_classes=K,
            progress=False)
    _check_round_trip(str(tmp_path / "regions" / "valid.json"))
    # a file whose wh really is width, height: boxes only fit that way, and it is read so
    write_reference_h5(str(tmp_path / "wh.h5"), hw=False)
    convert("hdf5", [str(tmp_path / "wh.h5")], str(tmp_path / "regions2" / "valid.json"), num_classes=K, progress=False)
    _check_round_trip(str(tmp_path / "regions2" / "valid.json"))


@pytest.mark.parametrize("defect,message", [
    ("box", "image 'img_b': a box lies outside the 300x200 image"),
    ("nan", "image 'img_b': features contain NaN or Inf"),
    ("many", "image 'img_b': 7 regions, expected at most 5"),
    ("dim", "image 'img_b': features have shape (7, 15), expected (regions, 16)"),
])
def test_bad_image_stops_with_one_line_and_writes_nothing(tmp_path, defect, message):
    images = {k: dict(v) for k, v in IMAGES.items()}
    bad = images["img_b"]
    if defect == "box":
        bad["boxes"] = bad["boxes"].copy()
        bad["boxes"][2, 2] = 400.0
    elif defect == "nan":
        bad["features"] = bad["features"].copy()
        bad["features"][1, 3] = np.nan
    elif defect == "dim":
        bad["features"] = bad["features"][:, :15]
    write_mmf(str(tmp_path / "feats"), images)
    out = tmp_path / "regions"
    argv = ["mmf", str(tmp_path / "feats"), str(out / "train.json"), "--quiet", "--num-classes", str(K),
            "--images-per-shard", "1"]
    if defect == "many":
        argv += ["--max-regions", "5"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert message in str(e.value) and "img_b.npy" in str(e.value) and "\n" not in str(e.value)
    assert _no_leftovers(out) == []  # the good image before it left no shard behind


def test_wrong_kind_of_file_is_one_line(tmp_path):
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(SystemExit) as e:
        main(["hdf5", str(tmp_path / "x.h5"), str(tmp_path / "r" / "t.json"), "--quiet"])
    assert "x.h5: not an HDF5 file" in str(e.value)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("data", data=np.zeros(3))
    with pytest.raises(SystemExit) as e:
        main(["hdf5", str(tmp_path / "other.h5"), str(tmp_path / "r" / "t.json"), "--quiet"])
    assert "not the reference feature layout" in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["mmf", str(tmp_path / "x.h5"), str(tmp_path / "r" / "t.json"), "--quiet"])
    assert "not a folder" in str(e.value)
