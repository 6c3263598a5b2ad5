"""Convert detector outputs people already have into the HDF5 region store (m3p_fairseq/data/region_store.py).

    m3p-import-regions mmf  features/            DATA/regions/train.json   # {id}.npy + {id}_info.npy
    m3p-import-regions tsv  trainval_*.tsv       DATA/regions/train.json   # bottom-up-attention TSV
    m3p-import-regions npz  npz_dir/             DATA/regions/train.json   # one {id}.npz per image
    m3p-import-regions hdf5 coco_train.h5        DATA/regions/train.json   # the M3P reference code's HDF5
    m3p-import-regions boxes36 nlvr2_boxes36.h5  DATA/regions/nlvr2.json   # IGLUE/volta: one group per image
    m3p-import-regions lmdb marvl-zh_X101.lmdb   DATA/regions/marvl-zh.json  # volta's LMDB (folder or file)

Source formats, as their tools write them:

* mmf (MMF / VMB extraction, the M3P / UC2 / IGLUE route): ``{id}.npy`` holds the N x D
  features; ``{id}_info.npy`` is ``np.save`` of a dict with ``bbox`` (N x 4, pixels),
  ``num_boxes``, ``objects`` (top-1 class ids), ``cls_prob`` (N x K, or K + 1 with background
  first), ``image_width``, ``image_height``. That dict is a pickle: it is read with a restricted
  unpickler that admits only numpy arrays, numpy scalars and dtypes, and plain containers, so a
  crafted file is refused before it can run code.
* tsv (peteanderson80/bottom-up-attention and its ports): one image a line, tab-separated fields
  ``image_id image_w image_h num_boxes boxes features`` (boxes and features base64 of float32),
  plus ``objects_id`` (base64 int) or ``cls_prob`` (base64 float32) where the extractor wrote them;
  name the columns with ``--tsv-fields``. Lines are tens of kB: the csv field limit is lifted.
* npz: ``np.load`` without pickles of ``features``|``x``, ``boxes``|``bbox``,
  ``objects``|``classes``|``objects_id``|``cls_prob`` and ``image_w``/``image_h``
  (or ``image_width``/``image_height``); the image id is the file name.
* hdf5 (microsoft/M3P's feature files, read as its dataset_finetune.py reads them): ``image_id``,
  ``wh`` (read by the reference as height, width), ``num_boxes`` (absent: all rows), ``bbox`` or
  ``boxes`` (N x R x 4), ``features`` (N x R x D), ``objects`` or ``object`` (N x R) else
  ``distribution`` (N x R x K, argmax taken). The reference unpacks ``wh`` as ``h, w``; if every
  box fits only the other way round, that order is used and said.
* boxes36 (IGLUE's ResNet-101 36-box features, volta's detectron2 extractors): one group per image,
  named by the image file's stem, with ``features`` (N x D), ``boxes`` (N x 4, pixels), ``obj_id``,
  ``obj_conf``, ``img_w``, ``img_h``; ``obj_id`` gives the classes.
* lmdb (volta / IGLUE ``*_X101.lmdb``, ``*_boxes36.lmdb``): an LMDB folder or a single LMDB file (IGLUE's
  downloads arrive as files); each value a pickled dict of one image (base64 float32 ``features`` /
  ``boxes`` with ``img_h``, ``img_w``, ``num_boxes``, ``objects``, ``cls_prob`` as npy_to_lmdb writes it;
  the plain arrays of a boxes36 group as h5_to_lmdb writes it; or the LXMERT TSV's strings), ``keys``
  the pickled list of keys. Values are read with the same restricted unpickler as ``_info.npy``: one
  that would run code or build any object but plain containers and numpy arrays is refused. The image
  id is the key as text.

Image ids are the names the feature files give: file stems (``1007129816``, ``82-6``, ``dev-850-0-img0``,
``n161313``), LMDB keys decoded. Annotations that name an image with its extension (Flickr30K's and
MaRVL's ``img_path`` / ``left_img`` ``82-6.jpg``) meet them by that stem.

Every image is validated while converting (feature size, finite values, boxes inside the image,
1 <= regions <= --max-regions, class ids in range); the first bad one stops the run with one line
naming the file and the image id, and nothing is written: shards are staged in a temporary folder
and moved next to the manifest only when all images passed. ``--images-per-shard`` bounds shards.
The manifest's index (``train.index``, see region_store.RegionIndex) is written beside it.

At scale: ``--workers N`` converts N contiguous parts of the input in N processes (the store is the
one a single process writes), and ``--slice K/N`` only the K-th of N slices, e.g. one per machine;
``m3p-merge-manifests OUT.json SLICE.json ...`` then checks that every slice is there and writes one
manifest and index over all their shards.
"""
import argparse
import base64
import csv
import functools
import glob
import io
import multiprocessing
import multiprocessing.connection
import os
import pickle
import sys
import traceback

import numpy as np

from m3p_fairseq.data.region_store import (H5_READ_ERRORS, RegionDataError, RegionIndex, RegionShardWriter,
                                           merge_manifests, write_manifest)
from m3p_fairseq.errors import M3PInputError, command, not_utf8_message, require_file
from m3p_fairseq.outputs import Staging, check_writable

FORMATS = ("mmf", "tsv", "npz", "hdf5", "boxes36", "lmdb")
TSV_FIELDS = "image_id,image_w,image_h,num_boxes,boxes,features"


class DetectorInputError(M3PInputError):
    """Bad detector output; the message names the file and the image id or line."""


# ---- restricted unpickling (MMF's _info.npy, volta's LMDB values) ------------------------------------

def _numpy_core():
    return getattr(np, "_core", None) or np.core


class PlainUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays / scalars / dtypes and plain containers; refuses every other global.

    Plain containers (dict, list, tuple, str, bytes, numbers, None) need no global in a pickle; the
    globals a numpy array or scalar needs are the ones below (numpy 1.x and 2.x spell the module
    differently; protocol 5 rebuilds arrays with ``_frombuffer``) plus ``_codecs.encode``, which
    protocol-2 pickles use for raw bytes. ``what`` names the kind of file in the refusal.
    """

    def __init__(self, file, what="pickle"):
        super().__init__(file)
        self.what = what

    def find_class(self, module, name):
        core = _numpy_core()
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
            ("numpy.core.multiarray", "scalar"): core.multiarray.scalar,
            ("numpy._core.multiarray", "scalar"): core.multiarray.scalar,
            ("numpy.core.numeric", "_frombuffer"): core.numeric._frombuffer,
            ("numpy._core.numeric", "_frombuffer"): core.numeric._frombuffer,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_encode,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in {self.what}")


PICKLE_ERRORS = (pickle.UnpicklingError, ValueError, EOFError, TypeError, AttributeError, IndexError, KeyError,
                 MemoryError, OverflowError, UnicodeDecodeError)


def _refusal(e):
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return f"refused or unreadable ({e.__class__.__name__}: {first})"


def _latin1_encode(text, encoding="latin1"):
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r}")
    return text.encode("latin1")


def load_info_npy(path):
    """The dict an ``np.save(path, dict)`` wrote, through PlainUnpickler (never numpy's allow_pickle)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(f)
            if not dtype.hasobject:
                raise DetectorInputError(f"{path}: expected a pickled dict (np.save of a dict), found a {dtype} array")
            obj = PlainUnpickler(f, "an _info.npy file").load()
    except DetectorInputError:
        raise
    except PICKLE_ERRORS + (OSError,) as e:
        raise DetectorInputError(f"{path}: {_refusal(e)}")
    if isinstance(obj, np.ndarray) and obj.shape == () and obj.dtype == object:
        obj = obj.item()
    if not isinstance(obj, dict):
        raise DetectorInputError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


# ---- one image, however it came ------------------------------------------------------------------

def classes_from(source, image_id, objects=None, cls_prob=None, num_classes=1600):
    """Top-1 class ids (and the class distribution) from what the detector wrote."""
    probs = None
    if cls_prob is not None:
        probs = np.asarray(cls_prob, dtype=np.float32)
        if probs.ndim != 2:
            raise DetectorInputError(f"{source}: image {image_id!r}: cls_prob has shape {probs.shape}, expected (regions, classes)")
        if probs.shape[1] == num_classes + 1:
            probs = probs[:, 1:]  # Visual Genome detectors put background first; the store keeps the K classes
        elif probs.shape[1] != num_classes:
            raise DetectorInputError(f"{source}: image {image_id!r}: cls_prob has {probs.shape[1]} classes, "
                                     f"expected {num_classes} (or {num_classes + 1} with background); see --num-classes")
    if objects is not None:
        return np.asarray(objects).astype(np.int64).reshape(-1), probs
    if probs is not None:
        return probs.argmax(1), probs
    raise DetectorInputError(f"{source}: image {image_id!r}: no detector classes (objects or cls_prob); "
                             f"MRM classification needs them")


class Image:
    __slots__ = ("source", "image_id", "features", "boxes", "classes", "width", "height", "probs")

    def __init__(self, source, image_id, features, boxes, classes, width, height, probs=None):
        self.source, self.image_id = source, str(image_id)
        self.features, self.boxes, self.classes = features, boxes, classes
        self.width, self.height, self.probs = width, height, probs


# ---- sources: the input cut into units, each yields Image ----------------------------------------
# Slices (--slice K/N) and workers (--workers N) each take a contiguous range of units, so that
# their shards, listed in order, hold the images in the input's order: the store a single process
# would write. Units are files (mmf, npz), images (hdf5) or bytes (tsv: a line belongs to the range
# holding its first byte, so no file is read in full by every worker).

class MmfFiles:
    def __init__(self, paths, num_classes, **unused):
        feats = []
        for folder in paths:
            if not os.path.isdir(folder):
                raise DetectorInputError(f"{folder}: not a folder of {{id}}.npy + {{id}}_info.npy files")
            feats += sorted(p for p in glob.glob(os.path.join(folder, "*.npy")) if not p.endswith("_info.npy"))
        if not feats:
            raise DetectorInputError(f"{', '.join(paths)}: no {{id}}.npy feature files")
        self.files, self.units, self.num_classes = feats, len(feats), num_classes

    def count(self, lo, hi):
        return hi - lo

    def images(self, lo, hi):
        for path in self.files[lo:hi]:
            image_id = os.path.basename(path)[:-len(".npy")]
            info_path = path[:-len(".npy")] + "_info.npy"
            if not os.path.isfile(info_path):
                raise DetectorInputError(f"{info_path}: missing (image {image_id!r} has features but no info)")
            info = load_info_npy(info_path)
            try:
                features = np.load(path, allow_pickle=False)
            except ValueError as e:
                raise DetectorInputError(f"{path}: image {image_id!r}: not a plain feature array ({str(e).splitlines()[0][:120]})")
            for key in ("bbox", "image_width", "image_height"):
                if key not in info:
                    raise DetectorInputError(f"{info_path}: image {image_id!r}: no {key!r} field")
            n = int(info.get("num_boxes", features.shape[0]))
            if features.ndim == 2 and features.shape[0] != n:
                raise DetectorInputError(f"{path}: image {image_id!r}: {features.shape[0]} feature rows, num_boxes says {n}")
            classes, probs = classes_from(info_path, image_id, info.get("objects"), info.get("cls_prob"), self.num_classes)
            yield Image(path, image_id, features, np.asarray(info["bbox"], dtype=np.float32), classes,
                        float(info["image_width"]), float(info["image_height"]), probs)


def _b64(source, image_id, field, value, dtype, rows):
    try:
        raw = base64.b64decode(value, validate=False)
    except (ValueError, TypeError):
        raise DetectorInputError(f"{source}: image {image_id!r}: field {field} is not base64")
    if isinstance(dtype, tuple):  # integer class ids: the extractor chose the width
        size = len(raw) // max(rows, 1)
        dtype = {8: np.int64, 4: np.int32}.get(size)
        if dtype is None:
            raise DetectorInputError(f"{source}: image {image_id!r}: field {field} has {len(raw)} bytes for {rows} regions")
    arr = np.frombuffer(raw, dtype=dtype)
    if rows <= 0 or arr.size % rows:
        raise DetectorInputError(f"{source}: image {image_id!r}: field {field} has {arr.size} values for {rows} regions")
    return arr.reshape(rows, -1)


class _TsvLine:
    """``path: line N`` in messages. N is counted only when a message is written: a worker whose
    range starts inside a file would otherwise read everything before it."""

    __slots__ = ("path", "start", "k")

    def __init__(self, path, start, k):
        self.path, self.start, self.k = path, start, k  # k-th line from byte ``start``

    def __str__(self):
        return f"{self.path}: line {_lines_before(self.path, self.start) + self.k}"


@functools.lru_cache(maxsize=64)
def _lines_before(path, offset, block=1 << 24):
    n = 0
    with open(path, "rb") as f:
        while offset > 0:
            chunk = f.read(min(block, offset))
            if not chunk:
                break
            n += chunk.count(b"\n")
            offset -= len(chunk)
    return n


class TsvLines:
    def __init__(self, paths, num_classes, tsv_fields=TSV_FIELDS, **unused):
        self.fields = [f.strip() for f in tsv_fields.split(",")]
        for need in ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features"):
            if need not in self.fields:
                raise DetectorInputError(f"--tsv-fields lacks {need!r}")
        limit = sys.maxsize
        while True:  # lines carry whole feature matrices; the csv default (128 kB) is too small
            try:
                csv.field_size_limit(limit)
                break
            except OverflowError:
                limit //= 2
        for path in paths:
            require_file(path, "TSV file")
        self.files = [(path, os.path.getsize(path)) for path in paths]
        self.units, self.num_classes = sum(size for _, size in self.files), num_classes

    def count(self, lo, hi):
        return None  # lines per byte are unknown without reading them

    def images(self, lo, hi):
        for path, a, b in _ranges_in_files(self.files, lo, hi):
            yield from self._lines(path, a, b)

    def _lines(self, path, a, b):
        with open(path, "rb") as f:
            if a > 0:
                f.seek(a - 1)
                if f.read(1) != b"\n":
                    f.readline()  # a line that started before ``a`` is the previous range's
            start = pos = f.tell()
            k = 0
            while pos < b:
                raw = f.readline()
                if not raw:
                    break
                pos += len(raw)
                k += 1
                try:  # utf-8-sig: a byte-order mark (a file saved by a Windows tool) is not part of the first id
                    text = raw.decode("utf-8-sig")
                except UnicodeDecodeError as e:
                    raise DetectorInputError(not_utf8_message(_TsvLine(path, start, k), raw, e))
                row = next(csv.reader([text], delimiter="\t"), [])
                if row:
                    yield self._image(_TsvLine(path, start, k), row)

    def _image(self, where, row):
        if len(row) != len(self.fields):
            raise DetectorInputError(f"{where}: {len(row)} fields, --tsv-fields names {len(self.fields)}")
        r = dict(zip(self.fields, row))
        image_id = r["image_id"]
        try:
            n, w, h = int(r["num_boxes"]), float(r["image_w"]), float(r["image_h"])
        except ValueError:
            raise DetectorInputError(f"{where}: image {image_id!r}: num_boxes/image_w/image_h are not numbers")
        if n < 1:
            raise DetectorInputError(f"{where}: image {image_id!r}: zero regions, expected at least 1")
        boxes = _b64(where, image_id, "boxes", r["boxes"], np.float32, n)
        features = _b64(where, image_id, "features", r["features"], np.float32, n)
        objects = _b64(where, image_id, "objects_id", r["objects_id"], (), n).reshape(-1) if "objects_id" in r else None
        cls_prob = _b64(where, image_id, "cls_prob", r["cls_prob"], np.float32, n) if "cls_prob" in r else None
        classes, probs = classes_from(where, image_id, objects, cls_prob, self.num_classes)
        return Image(where, image_id, features, boxes, classes, w, h, probs)


def _ranges_in_files(files, lo, hi):
    """(path, a, b) for the part of units [lo, hi) in each of ``files`` ((path, units) in order)."""
    base = 0
    for path, size in files:
        a, b = max(lo, base) - base, min(hi, base + size) - base
        if a < b:
            yield path, a, b
        base += size


def _first(npz, names):
    for name in names:
        if name in npz.files:
            return npz[name]
    return None


class NpzFiles(MmfFiles):
    def __init__(self, paths, num_classes, feat_dim=None, **unused):
        files = []
        for p in paths:
            files += sorted(glob.glob(os.path.join(p, "*.npz"))) if os.path.isdir(p) else [require_file(p, ".npz file")]
        if not files:
            raise DetectorInputError(f"{', '.join(paths)}: no .npz files")
        self.files, self.units, self.num_classes, self.feat_dim = files, len(files), num_classes, feat_dim

    def images(self, lo, hi):
        for path in self.files[lo:hi]:
            image_id = os.path.splitext(os.path.basename(path))[0]
            try:
                npz = np.load(path, allow_pickle=False)
                features = _first(npz, ("features", "x"))
                boxes = _first(npz, ("boxes", "bbox"))
                objects = _first(npz, ("objects", "classes", "objects_id"))
                cls_prob = _first(npz, ("cls_prob",))
                w, h = _first(npz, ("image_w", "image_width", "width")), _first(npz, ("image_h", "image_height", "height"))
            except (ValueError, OSError) as e:  # a pickled entry, or not a zip file
                raise DetectorInputError(f"{path}: image {image_id!r}: unreadable npz ({str(e).splitlines()[0][:160]})")
            missing = [name for name, v in (("features|x", features), ("boxes|bbox", boxes),
                                             ("image_w", w), ("image_h", h)) if v is None]
            if missing:
                raise DetectorInputError(f"{path}: image {image_id!r}: no {missing[0]!r} array (has {', '.join(npz.files)})")
            if features.ndim == 2 and self.feat_dim and features.shape[0] == self.feat_dim \
                    and features.shape[1] != self.feat_dim:
                features = features.T  # some extractors store D x N
            classes, probs = classes_from(path, image_id, objects, cls_prob, self.num_classes)
            yield Image(path, image_id, features, boxes.astype(np.float32), classes, float(w), float(h), probs)


class ReferenceHdf5:
    BLOCK_BYTES = 32 << 20  # images are read in blocks of about this size: one h5py read each costs ~0.1 ms

    def __init__(self, paths, num_classes, **unused):
        self.files = []  # (path, images, wh rows are height, width)
        for path in paths:
            with _open_hdf5(path) as f:  # closed before any worker forks: an HDF5 handle does not survive fork
                need = [k for k in ("image_id", "wh", "features") if k not in f]
                if "bbox" not in f and "boxes" not in f:
                    need.append("bbox")
                if not any(k in f for k in ("objects", "object", "distribution")):
                    need.append("objects")
                if need:
                    raise DetectorInputError(f"{path}: not the reference feature layout (no {', '.join(need)}; has {', '.join(f.keys()) if f else ''})")
                n = len(f["image_id"])
                counts = f["num_boxes"][:] if "num_boxes" in f else np.full(n, f["features"].shape[1])
                hw = _reference_wh_order(path, f["bbox"] if "bbox" in f else f["boxes"], f["wh"][:].astype(np.float64), counts)
            self.files.append((path, n, hw))
        self.units, self.num_classes = sum(n for _, n, _ in self.files), num_classes

    def count(self, lo, hi):
        return hi - lo

    def images(self, lo, hi):
        import h5py

        hw_of = {path: hw for path, _, hw in self.files}
        for path, a, b in _ranges_in_files([(p, n) for p, n, _ in self.files], lo, hi):
            with h5py.File(path, "r") as f:
                yield from self._images(path, f, hw_of[path], a, b)

    def _images(self, path, f, hw, a, b):
        feats, boxes_ds = f["features"], f["bbox"] if "bbox" in f else f["boxes"]
        obj_ds = f["objects"] if "objects" in f else f.get("object")
        per_image = int(np.prod(feats.shape[1:], dtype=np.int64)) * feats.dtype.itemsize
        step = max(1, min(4096, self.BLOCK_BYTES // max(per_image, 1)))
        for s in range(a, b, step):
            e = min(b, s + step)
            ids = [x.decode() if isinstance(x, bytes) else str(x) for x in f["image_id"][s:e]]
            wh = f["wh"][s:e].astype(np.float64)
            counts = f["num_boxes"][s:e] if "num_boxes" in f else np.full(e - s, feats.shape[1])
            rows = max(1, int(counts.max()))  # padding rows past every image's count are not read
            block_feats, block_boxes = feats[s:e, :rows], boxes_ds[s:e, :rows].astype(np.float32)
            block_objs = obj_ds[s:e, :rows] if obj_ds is not None else f["distribution"][s:e, :rows]
            for i, image_id in enumerate(ids):
                n = int(counts[i])
                if n < 1:
                    raise DetectorInputError(f"{path}: image {image_id!r}: zero regions, expected at least 1")
                if obj_ds is not None:
                    classes, probs = block_objs[i, :n].astype(np.int64), None
                else:
                    classes, probs = classes_from(path, image_id, None, block_objs[i, :n], self.num_classes)
                h, w = wh[i] if hw else wh[i][::-1]
                yield Image(path, image_id, block_feats[i, :n], block_boxes[i, :n], classes, float(w), float(h), probs)


def _open_hdf5(path):
    import h5py

    require_file(path, "HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DetectorInputError(f"{path}: not an HDF5 file ({str(e).splitlines()[0][:160]})")


def _reference_wh_order(path, boxes_ds, wh, counts, sample=256):
    """True if ``wh`` rows are (height, width), as the reference reads them; checked on the boxes."""
    def fits(hw):
        for i in range(min(sample, len(wh))):
            b = boxes_ds[i, :int(counts[i])]
            h, w = wh[i] if hw else wh[i][::-1]
            if (b[:, 2] > w + 1).any() or (b[:, 3] > h + 1).any():
                return False
        return True

    if fits(True):
        return True
    if fits(False):
        print(f"{path}: 'wh' holds width, height (boxes fit only that way); read as such", file=sys.stderr)
        return False
    return True  # neither: validation names the first image that does not fit


class GroupHdf5:
    """boxes36: one HDF5 group per image, named by the image's file stem, holding ``features``
    (N x D), ``boxes`` (N x 4, pixels), ``obj_id`` (N), ``obj_conf`` (N), ``img_w``, ``img_h``
    (scalars), as IGLUE's / volta's detectron2 extractors write them (``attr_id`` / ``attr_conf``
    are not read)."""

    NEEDED = ("features", "boxes", "obj_id", "img_w", "img_h")

    def __init__(self, paths, num_classes, **unused):
        import h5py

        self.files = []  # (path, image ids in the file's order)
        for path in paths:
            with _open_hdf5(path) as f:  # closed before any worker forks
                ids = list(f.keys())
                if ids and not isinstance(f[ids[0]], h5py.Group):
                    raise DetectorInputError(f"{path}: not the boxes36 layout (one group per image; found a "
                                             f"dataset {ids[0]!r}); the M3P reference layout is format hdf5")
            self.files.append((path, ids))
        self.units, self.num_classes = sum(len(ids) for _, ids in self.files), num_classes

    def count(self, lo, hi):
        return hi - lo

    def images(self, lo, hi):
        import h5py

        ids_of = dict(self.files)
        for path, a, b in _ranges_in_files([(p, len(ids)) for p, ids in self.files], lo, hi):
            with h5py.File(path, "r") as f:
                for image_id in ids_of[path][a:b]:
                    where = f"{path}: image {image_id!r}"
                    try:
                        g = f[image_id]
                        if not isinstance(g, h5py.Group):
                            raise DetectorInputError(f"{where}: a dataset where the boxes36 layout has a group")
                        missing = [k for k in self.NEEDED if k not in g]
                        if missing:
                            raise DetectorInputError(f"{where}: no {missing[0]!r} (has {', '.join(g.keys())})")
                        arrays = {k: g[k][()] for k in self.NEEDED}
                    except H5_READ_ERRORS as e:
                        raise DetectorInputError(f"{where}: unreadable ({str(e).splitlines()[0][:160]})")
                    yield Image(path, image_id, arrays["features"], np.asarray(arrays["boxes"], dtype=np.float32),
                                np.asarray(arrays["obj_id"]).astype(np.int64).reshape(-1),
                                _number(where, "img_w", arrays["img_w"]), _number(where, "img_h", arrays["img_h"]))


def _number(where, field, value):
    try:
        return float(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError):
        raise DetectorInputError(f"{where}: {field} is {value!r}, expected a number")


class VoltaLmdb:
    """volta's LMDB (IGLUE's ``*_X101.lmdb`` / ``*_boxes36.lmdb``), a folder or a single file: each value a
    pickled dict of one image, a ``keys`` entry the pickled list of the keys. The dict is what volta's
    converters write: npy_to_lmdb (base64 float32 ``features`` / ``boxes``, ``img_h``, ``img_w``,
    ``num_boxes``, ``objects``, ``cls_prob``), h5_to_lmdb (the boxes36 group's arrays as they are:
    ``features``, ``boxes``, ``obj_id``, ``img_w``, ``img_h``) or the LXMERT TSV route (every field a
    string, base64 ``objects_id``). Values go through PlainUnpickler: one that would run code or build
    anything but plain containers and numpy arrays is refused. The image id is the key, decoded."""

    FILE_KIND = "a volta LMDB value"

    def __init__(self, paths, num_classes, feat_dim=None, **unused):
        self.files, self.num_classes = [], num_classes  # (path, raw keys)
        for path in paths:
            env = _open_lmdb(path)
            try:
                with env.begin() as txn:
                    raw = txn.get(b"keys")
                    if raw is None:  # no key list: every key but the list's own, in LMDB's order
                        keys = [k for k in txn.cursor().iternext(keys=True, values=False) if k != b"keys"]
                    else:
                        keys = _unpickle(raw, path, "the keys entry")
                        if not isinstance(keys, (list, tuple)) or not all(isinstance(k, (bytes, str)) for k in keys):
                            raise DetectorInputError(f"{path}: the keys entry is a {type(keys).__name__}, "
                                                     f"expected a list of keys")
                        keys = [k.encode() if isinstance(k, str) else bytes(k) for k in keys]
            except lmdb_errors() as e:
                raise DetectorInputError(f"{path}: unreadable LMDB ({str(e).splitlines()[0][:160]})")
            finally:
                env.close()
            self.files.append((path, keys))
        self.units = sum(len(keys) for _, keys in self.files)

    def count(self, lo, hi):
        return hi - lo

    def images(self, lo, hi):
        keys_of = dict(self.files)
        for path, a, b in _ranges_in_files([(p, len(k)) for p, k in self.files], lo, hi):
            env = _open_lmdb(path)  # per call: an LMDB handle must not cross a fork
            try:
                with env.begin() as txn:
                    for key in keys_of[path][a:b]:
                        image_id = _key_text(path, key)
                        try:
                            raw = txn.get(key)
                        except lmdb_errors() as e:
                            raise DetectorInputError(f"{path}: image {image_id!r}: unreadable ({str(e)[:160]})")
                        if raw is None:
                            raise DetectorInputError(f"{path}: image {image_id!r} is in the keys entry but has no value")
                        yield self._image(path, image_id, _unpickle(raw, path, f"image {image_id!r}"))
            finally:
                env.close()

    def _image(self, path, image_id, item):
        where = f"{path}: image {image_id!r}"
        if not isinstance(item, dict):
            raise DetectorInputError(f"{where}: the value is a {type(item).__name__}, expected a dict")

        def field(*names):
            return next((item[n] for n in names if item.get(n) is not None), None)

        need = {"features": ("features",), "boxes": ("boxes", "bbox"), "img_w": ("img_w", "image_w", "image_width"),
                "img_h": ("img_h", "image_h", "image_height")}
        got = {k: field(*names) for k, names in need.items()}
        missing = [k for k, v in got.items() if v is None]
        if missing:
            raise DetectorInputError(f"{where}: no {missing[0]!r} field (has {', '.join(map(str, item))})")
        n = field("num_boxes")
        boxes = _lmdb_array(path, image_id, "boxes", got["boxes"], np.float32, None if n is None else _count(where, n))
        rows = boxes.size // 4 if n is None else _count(where, n)
        if isinstance(got["boxes"], (bytes, str)) and n is not None and boxes.shape[1] == 8:
            boxes = _lmdb_array(path, image_id, "boxes", got["boxes"], np.float64, rows)  # float64 boxes, 8 bytes each
        boxes = boxes.reshape(-1, 4) if boxes.size % 4 == 0 else boxes
        features = _lmdb_array(path, image_id, "features", got["features"], np.float32, rows)
        objects, cls_prob = field("objects", "obj_id", "objects_id"), field("cls_prob")
        if objects is not None:
            objects = _lmdb_array(path, image_id, "objects", objects, (), rows).reshape(-1)
        if cls_prob is not None:
            cls_prob = _lmdb_array(path, image_id, "cls_prob", cls_prob, np.float32, rows)
        classes, probs = classes_from(path, image_id, objects, cls_prob, self.num_classes)
        return Image(path, image_id, features, boxes, classes, _number(where, "img_w", got["img_w"]),
                     _number(where, "img_h", got["img_h"]), probs)


def lmdb_errors():
    import lmdb

    return (lmdb.Error,)


def _open_lmdb(path):
    """A read-only handle on an LMDB folder or single file, refused (one line) if it is not one or is
    shorter than its own header says: a page past the end of a mapped file would kill the process."""
    import lmdb

    if not os.path.exists(path):
        raise DetectorInputError(f"{path}: no such file or folder")
    folder = os.path.isdir(path)
    try:
        env = lmdb.open(path, subdir=folder, readonly=True, lock=False, readahead=False, meminit=False, max_dbs=0)
    except lmdb.Error as e:
        raise DetectorInputError(f"{path}: not an LMDB {'folder' if folder else 'file'} ({str(e).splitlines()[0][:160]})")
    data = os.path.join(path, "data.mdb") if folder else path
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    if os.path.getsize(data) < need:
        env.close()
        raise DetectorInputError(f"{data}: truncated LMDB ({os.path.getsize(data)} bytes, its header says at least {need})")
    return env


def _unpickle(raw, path, what):
    try:
        return PlainUnpickler(io.BytesIO(raw), VoltaLmdb.FILE_KIND).load()
    except PICKLE_ERRORS as e:
        raise DetectorInputError(f"{path}: {what}: value {_refusal(e)}")


def _key_text(path, key):
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        raise DetectorInputError(f"{path}: key {key[:60]!r} is not UTF-8")


def _count(where, value):
    try:
        n = int(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError):
        raise DetectorInputError(f"{where}: num_boxes is {value!r}, expected a number")
    if n < 1:
        raise DetectorInputError(f"{where}: zero regions, expected at least 1")
    return n


def _lmdb_array(path, image_id, field, value, dtype, rows):
    """An array field as volta stores it: a numpy array, or base64 (bytes or str) of its raw values;
    ``rows`` the region count where known."""
    if isinstance(value, (bytes, str)):
        return _b64(path, image_id, field, value, dtype, rows or 1).reshape((rows, -1) if rows else (-1,))
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise DetectorInputError(f"{path}: image {image_id!r}: field {field} holds {arr.dtype}, expected numbers")
    if rows and arr.ndim == 1 and arr.size % rows == 0 and field != "objects":
        arr = arr.reshape(rows, -1)
    return arr


SOURCES = {"mmf": MmfFiles, "tsv": TsvLines, "npz": NpzFiles, "hdf5": ReferenceHdf5, "boxes36": GroupHdf5,
           "lmdb": VoltaLmdb}


# ---- converting ------------------------------------------------------------------------------------

def parse_slice(text):
    """``K/N`` -> (K, N), 0 <= K < N."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise DetectorInputError(f"--slice {text!r}: expected K/N, e.g. 0/4 for the first of four slices")
    if not (n >= 1 and 0 <= k < n):
        raise DetectorInputError(f"--slice {text!r}: expected 0 <= K < N")
    return k, n


def _part(lo, hi, k, n):
    """The k-th of n near-equal contiguous parts of [lo, hi)."""
    return lo + (hi - lo) * k // n, lo + (hi - lo) * (k + 1) // n


def convert(fmt, sources, manifest, images_per_shard=20000, feat_dim=None, num_classes=1600, max_regions=100,
            with_class_probs=False, tsv_fields=TSV_FIELDS, progress=True, workers=1, part=(0, 1)):
    """Read ``sources`` in format ``fmt`` and write ``manifest`` (+ its shards and index); returns the
    image count. ``workers``: processes converting contiguous ranges of the input side by side (the
    store is the one a single process writes: same ids, rows and arrays; shard boundaries may
    differ). ``part`` (K, N): convert only the K-th of N slices of the input, to merge later with
    ``merge_manifests`` (m3p-merge-manifests)."""
    from tqdm import tqdm

    if fmt not in SOURCES:
        raise DetectorInputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if images_per_shard < 1:
        raise DetectorInputError("--images-per-shard must be at least 1")
    if workers < 1:
        raise DetectorInputError("--workers must be at least 1")
    k, n = part
    out_dir = os.path.dirname(os.path.abspath(manifest))
    stem = os.path.basename(manifest)
    stem = stem[:-len(".json")] if stem.endswith(".json") else stem
    check_writable(manifest)
    source = SOURCES[fmt](sources, num_classes=num_classes, feat_dim=feat_dim, tsv_fields=tsv_fields)
    if feat_dim is None:
        feat_dim = _first_feat_dim(source, sources)  # of the whole input: every slice and worker agree
    lo, hi = _part(0, source.units, k, n)
    ranges = [r for r in (_part(lo, hi, w, workers) for w in range(workers)) if r[0] < r[1]]
    job = {"images_per_shard": images_per_shard, "feat_dim": feat_dim, "num_classes": num_classes,
           "max_regions": max_regions, "with_class_probs": with_class_probs}
    # shards, index and manifest appear together, or nothing (not even a folder made for them)
    try:
        with Staging() as out:
            job["stage"] = out.scratch(out_dir)
            counts = [source.count(a, b) for a, b in ranges]
            total = None if None in counts else sum(counts)
            with tqdm(total=total, disable=not progress, unit="img", desc=stem) as bar:
                if len(ranges) > 1:
                    results = _in_workers(source, ranges, job, bar)
                else:
                    results = [_convert_range(source, a, b, job, "w0.", bar.update) for a, b in ranges]
            names = [name for shard_names, _ in results for name in shard_names]
            count = sum(c for _, c in results)
            if count == 0 and n == 1:
                raise DetectorInputError(f"{', '.join(sources)}: no images")
            # ids across workers are checked here, before anything is moved next to the manifest
            index = RegionIndex.build([os.path.join(job["stage"], name) for name in names], ", ".join(sources))
            finals = [os.path.join(out_dir, f"{stem}.{j}.h5") for j in range(len(names))]
            staged = [out.file(final) for final in finals]
            for name, path in zip(names, staged):
                os.replace(os.path.join(job["stage"], name), path)
            extra = {"slice": {"index": k, "count": n, "format": fmt, "units": source.units}} if n > 1 else None
            write_manifest(manifest, finals, feat_dim, num_classes, index=index, extra=extra, staging=out,
                           staged=staged)
    except RegionDataError as e:
        raise DetectorInputError(str(e))
    return count


def _first_feat_dim(source, sources):
    images = source.images(0, source.units)
    try:
        img = next(images, None)
    finally:
        images.close()  # its file is closed before workers fork
    if img is None:
        raise DetectorInputError(f"{', '.join(sources)}: no images")
    features = np.asarray(img.features)
    return int(features.shape[1]) if features.ndim == 2 else -1


def _convert_range(source, lo, hi, job, prefix, tick):
    """Write the images of units [lo, hi) into shards ``{prefix}{j}.h5`` in the stage folder;
    returns (shard names, image count)."""
    writer, names, seen, count = None, [], set(), 0
    try:
        for img in source.images(lo, hi):
            if img.image_id in seen:
                raise DetectorInputError(f"{img.source}: image {img.image_id!r} appears twice")
            if job["with_class_probs"] and img.probs is None:
                raise DetectorInputError(f"{img.source}: image {img.image_id!r}: no class distribution "
                                         f"(cls_prob / distribution) for --with-class-probs")
            if writer is None or len(writer) >= job["images_per_shard"]:
                if writer is not None:
                    writer.close()
                names.append(f"{prefix}{len(names)}.h5")
                writer = RegionShardWriter(os.path.join(job["stage"], names[-1]), job["feat_dim"], job["num_classes"],
                                           with_class_probs=job["with_class_probs"], max_regions=job["max_regions"])
            writer.add(img.image_id, img.features, img.boxes, img.classes, img.width, img.height,
                       img.probs if job["with_class_probs"] else None, source=img.source)
            seen.add(img.image_id)
            count += 1
            tick(1)
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    return names, count


def _in_workers(source, ranges, job, bar):
    """_convert_range of each range in its own (forked) process. When one fails, the ranges after it
    stop (their input is never needed) and those before it finish: the error raised is the one a
    single process would have met first."""
    ctx = multiprocessing.get_context("fork")  # the source (file lists, reader state) is inherited, not pickled
    done = ctx.Value("q", 0)
    procs, conns = [], []
    try:
        for w, (a, b) in enumerate(ranges):
            recv, send = ctx.Pipe(duplex=False)
            procs.append(ctx.Process(target=_worker, args=(source, a, b, job, f"w{w}.", done, send), daemon=True))
            procs[-1].start()
            send.close()
            conns.append(recv)
        results = [None] * len(ranges)
        waiting = dict(enumerate(conns))
        while waiting:
            ready = multiprocessing.connection.wait(list(waiting.values()), timeout=0.5)
            bar.update(done.value - bar.n)
            for conn in ready:
                w = conns.index(conn)
                if w not in waiting:  # a later worker already stopped by an earlier one's failure, this round
                    continue
                try:
                    results[w] = conn.recv()
                except EOFError:
                    results[w] = ("crash", f"exited with code {procs[w].exitcode} and no result")
                del waiting[w]
                if results[w][0] != "ok":
                    for later in [v for v in waiting if v > w]:
                        procs[later].terminate()
                        del waiting[later]
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    for w, result in enumerate(results):
        if result is not None and result[0] == "input":
            raise DetectorInputError(result[1])
        if result is not None and result[0] == "crash":
            raise RuntimeError(f"conversion worker {w} failed: {result[1]}")
    return [result[1] for result in results]


def _worker(source, lo, hi, job, prefix, done, conn):
    pending = [0]

    def tick(k):
        pending[0] += k
        if pending[0] >= 256:
            with done.get_lock():
                done.value += pending[0]
            pending[0] = 0

    try:
        result = ("ok", _convert_range(source, lo, hi, job, prefix, tick))
    except M3PInputError as e:
        result = ("input", str(e))
    except BaseException:
        result = ("crash", traceback.format_exc())
    conn.send(result)
    conn.close()


@command("m3p-import-regions")
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("format", choices=FORMATS, help="source format (see the module docstring)")
    p.add_argument("sources", nargs="+", help="folder(s) (mmf, npz) or file(s) (tsv, hdf5, npz)")
    p.add_argument("manifest", help="output manifest, e.g. DATA/regions/train.json (shards train.K.h5 beside it)")
    p.add_argument("--images-per-shard", type=int, default=20000, help="images per HDF5 shard")
    p.add_argument("--feat-dim", type=int, default=None, help="feature size (default: the first image's)")
    p.add_argument("--num-classes", type=int, default=1600, help="detector classes (1600 for Visual Genome detectors)")
    p.add_argument("--max-regions", type=int, default=100, help="most regions an image may have")
    p.add_argument("--with-class-probs", action="store_true", help="also store the class distribution (needs cls_prob)")
    p.add_argument("--tsv-fields", default=TSV_FIELDS, help="tsv: the column names, in order")
    p.add_argument("--workers", type=int, default=1,
                   help="processes converting side by side, each a contiguous part of the input into its own shards")
    p.add_argument("--slice", default="0/1", metavar="K/N",
                   help="convert only the K-th of N equal slices of the input (K = 0..N-1), e.g. one per machine; "
                        "then m3p-merge-manifests OUT.json SLICE.json ... (every machine must see the same input)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    n = convert(a.format, a.sources, a.manifest, a.images_per_shard, a.feat_dim, a.num_classes, a.max_regions,
                a.with_class_probs, a.tsv_fields, progress=not a.quiet, workers=a.workers, part=parse_slice(a.slice))
    print(f"{a.manifest}: {n} images", file=sys.stderr)


@command("m3p-merge-manifests")
def merge_main(argv=None):
    p = argparse.ArgumentParser(description="Merge region manifests into one, with its index: the slices of "
                                            "m3p-import-regions --slice K/N (all of them, put in slice order), or any "
                                            "stores of one corpus. Shards stay where they are.")
    p.add_argument("out", help="the merged manifest, e.g. DATA/regions/train.json")
    p.add_argument("manifests", nargs="+", help="the manifests to merge (one: rewrite its index)")
    a = p.parse_args(argv)
    check_writable(a.out)
    n = merge_manifests(a.out, a.manifests)
    print(f"{a.out}: {n} images", file=sys.stderr)


if __name__ == "__main__":
    main()
