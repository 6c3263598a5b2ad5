"""IGLUE's feature files -> region store, through ``m3p-import-regions``: volta's LMDB (folder and single
file, each of its converters' value layouts) and the boxes36 HDF5; each bad input ends in one line
naming the file and the image, with nothing written; an LMDB value whose unpickling would run code
is refused before it can.

Fixtures are written here as volta's converters write them (npy_to_lmdb.py, h5_to_lmdb.py, the LXMERT
TSV route of convert_*_lmdb.py) and as its detectron2 extractors write boxes36 groups.
"""
import base64
import os
import pickle

import h5py
import lmdb
import numpy as np
import pytest

from preprocess.detectors import main
from tests.test_import_regions import IMAGES, K, _check_round_trip

B64 = base64.b64encode


def npy_to_lmdb_value(image_id, img):
    # npy_to_lmdb.py: base64 of the arrays' raw float32 bytes, the rest of _info.npy as it was
    return {"feature_path": image_id, "features": B64(img["features"]), "img_h": int(img["h"]),
            "img_w": int(img["w"]), "num_boxes": len(img["boxes"]), "objects": img["objects"],
            "cls_prob": img["probs"], "boxes": B64(img["boxes"])}


def h5_to_lmdb_value(image_id, img):
    # h5_to_lmdb.py: every dataset of the boxes36 group as h5py reads it, plus img_id
    return {"features": img["features"], "boxes": img["boxes"], "obj_id": img["objects"].astype(np.int64),
            "obj_conf": np.full(len(img["boxes"]), 0.9, np.float32), "img_w": np.int64(img["w"]),
            "img_h": np.int64(img["h"]), "img_id": image_id}


def tsv_lmdb_value(image_id, img):
    # convert_nlvr2_lmdb.py: the csv.DictReader row of an LXMERT TSV, every field a string
    return {"img_id": image_id, "img_h": str(int(img["h"])), "img_w": str(int(img["w"])),
            "objects_id": B64(img["objects"].astype(np.int64).tobytes()).decode(), "num_boxes": str(len(img["boxes"])),
            "boxes": B64(img["boxes"].tobytes()).decode(), "features": B64(img["features"].tobytes()).decode()}


def write_lmdb(path, values, single_file=False, with_keys=True):
    env = lmdb.open(str(path), subdir=not single_file, map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in values.items():
            txn.put(key.encode(), value if isinstance(value, bytes) else pickle.dumps(value))
        if with_keys:
            txn.put(b"keys", pickle.dumps([k.encode() for k in values]))
    env.close()
    if single_file:
        os.remove(f"{path}-lock")  # a downloaded .lmdb file comes without its lock file


def write_boxes36(path, images=IMAGES):
    with h5py.File(path, "w") as f:
        for image_id, img in images.items():
            g = f.create_group(image_id)
            g["features"], g["boxes"], g["obj_id"] = img["features"], img["boxes"], img["objects"].astype(np.int64)
            g["obj_conf"] = np.full(len(img["boxes"]), 0.5, np.float32)
            g["attr_id"], g["attr_conf"] = np.zeros(len(img["boxes"]), np.int64), np.zeros(len(img["boxes"]), np.float32)
            g["img_w"], g["img_h"] = int(img["w"]), int(img["h"])


def _run(fmt, source, manifest, *flags):
    main([fmt, str(source), str(manifest), "--quiet", "--num-classes", str(K), *flags])


def _fails(fmt, source, out, *flags):
    """One line naming ``source``, no store and no folder left behind; returns the line."""
    with pytest.raises(SystemExit) as e:
        _run(fmt, source, out / "regions" / "x.json", *flags)
    line = str(e.value)
    assert "\n" not in line and str(source).split(os.sep)[-1] in line, line
    assert not out.exists() or os.listdir(out) == []  # not even an empty folder
    return line


def test_volta_lmdb_layouts_round_trip(tmp_path):
    # npy_to_lmdb (X101: base64 features and boxes, cls_prob with background first) in a folder
    write_lmdb(tmp_path / "marvl-zh_X101.lmdb", {i: npy_to_lmdb_value(i, img) for i, img in IMAGES.items()})
    _run("lmdb", tmp_path / "marvl-zh_X101.lmdb", tmp_path / "a" / "marvl-zh.json", "--with-class-probs")
    _check_round_trip(str(tmp_path / "a" / "marvl-zh.json"), probs=True)
    # h5_to_lmdb (plain arrays) as a single file, as IGLUE's downloads arrive
    write_lmdb(tmp_path / "nlvr2_boxes36.lmdb", {i: h5_to_lmdb_value(i, img) for i, img in IMAGES.items()},
               single_file=True)
    assert os.path.isfile(tmp_path / "nlvr2_boxes36.lmdb")
    _run("lmdb", tmp_path / "nlvr2_boxes36.lmdb", tmp_path / "b" / "nlvr2.json")
    _check_round_trip(str(tmp_path / "b" / "nlvr2.json"))
    # the LXMERT TSV route (strings only), pickled with protocol 2, and with no keys entry
    write_lmdb(tmp_path / "tsv.lmdb", {i: pickle.dumps(tsv_lmdb_value(i, img), protocol=2) for i, img in IMAGES.items()},
               with_keys=False)
    _run("lmdb", tmp_path / "tsv.lmdb", tmp_path / "c" / "t.json")
    _check_round_trip(str(tmp_path / "c" / "t.json"))
    # numpy arrays pickled with protocol 5 (rebuilt from buffers) read too; two workers write the same store
    write_lmdb(tmp_path / "p5.lmdb", {i: pickle.dumps(h5_to_lmdb_value(i, img), protocol=5) for i, img in IMAGES.items()})
    _run("lmdb", tmp_path / "p5.lmdb", tmp_path / "d" / "p.json", "--workers", "2")
    _check_round_trip(str(tmp_path / "d" / "p.json"))


def test_boxes36_hdf5_round_trip(tmp_path):
    write_boxes36(tmp_path / "flickr30k_boxes36.h5")
    _run("boxes36", tmp_path / "flickr30k_boxes36.h5", tmp_path / "regions" / "f.json", "--images-per-shard", "2")
    _check_round_trip(str(tmp_path / "regions" / "f.json"))


def test_lmdb_value_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    values = {i: npy_to_lmdb_value(i, img) for i, img in IMAGES.items()}
    values["img_b"] = pickle.dumps({"features": Evil()})
    write_lmdb(tmp_path / "evil.lmdb", values)
    line = _fails("lmdb", tmp_path / "evil.lmdb", tmp_path / "out")
    assert "image 'img_b'" in line and "posix.system is not allowed" in line
    # the keys entry goes through the same unpickler
    write_lmdb(tmp_path / "evil_keys.lmdb", {"img_a": npy_to_lmdb_value("img_a", IMAGES["img_a"])}, with_keys=False)
    env = lmdb.open(str(tmp_path / "evil_keys.lmdb"))
    with env.begin(write=True) as txn:
        txn.put(b"keys", pickle.dumps(Evil()))
    env.close()
    assert "the keys entry" in _fails("lmdb", tmp_path / "evil_keys.lmdb", tmp_path / "out")
    assert not marker.exists()


def _lmdb_defect(tmp_path, defect):
    images = {k: dict(v) for k, v in IMAGES.items()}
    values = {i: npy_to_lmdb_value(i, img) for i, img in images.items()}
    if defect == "nan":
        feats = images["img_b"]["features"].copy()
        feats[1, 3] = np.nan
        values["img_b"]["features"] = B64(feats)
    elif defect == "box":
        boxes = images["img_b"]["boxes"].copy()
        boxes[2, 2] = 400.0
        values["img_b"]["boxes"] = B64(boxes)
    elif defect == "missing":
        del values["img_b"]["boxes"]
    elif defect == "not_dict":
        values["img_b"] = [1, 2]
    path = tmp_path / "feats.lmdb"
    write_lmdb(path, values)
    if defect == "truncated":
        data = path / "data.mdb"
        data.write_bytes(data.read_bytes()[:-4096])  # the last page lost: reading it would kill the process
    elif defect == "garbled":
        (path / "data.mdb").write_bytes(os.urandom(3 * 4096))
    return path


@pytest.mark.parametrize("defect,message", [
    ("nan", "image 'img_b': features contain NaN or Inf"),
    ("box", "image 'img_b': a box lies outside the 300x200 image"),
    ("missing", "image 'img_b': no 'boxes' field"),
    ("not_dict", "image 'img_b': the value is a list, expected a dict"),
    ("truncated", "data.mdb: truncated LMDB"),
    ("garbled", "feats.lmdb: not an LMDB folder"),
])
def test_bad_lmdb_is_one_line_and_writes_nothing(tmp_path, defect, message):
    assert message in _fails("lmdb", _lmdb_defect(tmp_path, defect), tmp_path / "out")


def test_bad_boxes36_is_one_line_and_writes_nothing(tmp_path):
    images = {k: dict(v) for k, v in IMAGES.items()}
    images["img_b"]["features"] = images["img_b"]["features"].copy()
    images["img_b"]["features"][0, 0] = np.inf
    write_boxes36(tmp_path / "nan.h5", images)
    assert "nan.h5: image 'img_b': features contain NaN or Inf" in _fails("boxes36", tmp_path / "nan.h5", tmp_path / "o")
    write_boxes36(tmp_path / "noobj.h5")
    with h5py.File(tmp_path / "noobj.h5", "a") as f:
        del f["img_c"]["obj_id"]
    assert "image 'img_c': no 'obj_id'" in _fails("boxes36", tmp_path / "noobj.h5", tmp_path / "o")
    write_boxes36(tmp_path / "cut.h5")
    raw = (tmp_path / "cut.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(raw[:len(raw) // 2])
    assert "cut.h5" in _fails("boxes36", tmp_path / "cut.h5", tmp_path / "o")
