"""Convert detector outputs people already have into the HDF5 region store (m3p_fairseq/data/region_store.py).

    m3p-import-regions mmf  features/            DATA/regions/train.json   # {id}.npy + {id}_info.npy
    m3p-import-regions tsv  trainval_*.tsv       DATA/regions/train.json   # bottom-up-attention TSV
    m3p-import-regions npz  npz_dir/             DATA/regions/train.json   # one {id}.npz per image
    m3p-import-regions hdf5 coco_train.h5        DATA/regions/train.json   # the M3P reference code's HDF5

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

Every image is validated while converting (feature size, finite values, boxes inside the image,
1 <= regions <= --max-regions, class ids in range); the first bad one stops the run with one line
naming the file and the image id, and nothing is written: shards are staged in a temporary folder
and moved next to the manifest only when all images passed. ``--images-per-shard`` bounds shards.
"""
import argparse
import base64
import csv
import glob
import os
import pickle
import shutil
import sys
import tempfile

import numpy as np

from m3p_fairseq.data.region_store import RegionDataError, RegionShardWriter, check_image, write_manifest
from m3p_fairseq.errors import M3PInputError

FORMATS = ("mmf", "tsv", "npz", "hdf5")
TSV_FIELDS = "image_id,image_w,image_h,num_boxes,boxes,features"


class DetectorInputError(M3PInputError):
    """Bad detector output; the message names the file and the image id or line."""


# ---- restricted unpickling of MMF's _info.npy ----------------------------------------------------

def _numpy_core():
    return getattr(np, "_core", None) or np.core


class InfoUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays / scalars / dtypes and plain containers; refuses every other global.

    Plain containers (dict, list, tuple, str, numbers) need no global in a pickle; the globals a
    numpy object array of them needs are the four below (numpy 1.x and 2.x spell the module
    differently) plus ``_codecs.encode``, which protocol-2 pickles use for raw bytes.
    """

    def find_class(self, module, name):
        core = _numpy_core().multiarray
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): core._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): core._reconstruct,
            ("numpy.core.multiarray", "scalar"): core.scalar,
            ("numpy._core.multiarray", "scalar"): core.scalar,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_encode,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in an _info.npy file")


def _latin1_encode(text, encoding="latin1"):
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r}")
    return text.encode("latin1")


def load_info_npy(path):
    """The dict an ``np.save(path, dict)`` wrote, through InfoUnpickler (never numpy's allow_pickle)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(f)
            if not dtype.hasobject:
                raise DetectorInputError(f"{path}: expected a pickled dict (np.save of a dict), found a {dtype} array")
            obj = InfoUnpickler(f).load()
    except DetectorInputError:
        raise
    except (pickle.UnpicklingError, ValueError, EOFError, OSError, TypeError, AttributeError) as e:
        raise DetectorInputError(f"{path}: refused or unreadable ({e.__class__.__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
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


# ---- readers: each yields Image ------------------------------------------------------------------

def read_mmf(paths, num_classes, **unused):
    feats = []
    for folder in paths:
        if not os.path.isdir(folder):
            raise DetectorInputError(f"{folder}: not a folder of {{id}}.npy + {{id}}_info.npy files")
        feats += sorted(p for p in glob.glob(os.path.join(folder, "*.npy")) if not p.endswith("_info.npy"))
    if not feats:
        raise DetectorInputError(f"{', '.join(paths)}: no {{id}}.npy feature files")
    yield len(feats)
    for path in feats:
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
        classes, probs = classes_from(info_path, image_id, info.get("objects"), info.get("cls_prob"), num_classes)
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


def read_tsv(paths, num_classes, tsv_fields=TSV_FIELDS, **unused):
    fields = [f.strip() for f in tsv_fields.split(",")]
    for need in ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features"):
        if need not in fields:
            raise DetectorInputError(f"--tsv-fields lacks {need!r}")
    limit = sys.maxsize
    while True:  # lines carry whole feature matrices; the csv default (128 kB) is too small
        try:
            csv.field_size_limit(limit)
            break
        except OverflowError:
            limit //= 2
    yield None  # size unknown without reading every file
    for path in paths:
        if not os.path.isfile(path):
            raise DetectorInputError(f"{path}: no such file")
        with open(path, newline="", encoding="utf-8") as f:
            for line_no, row in enumerate(csv.reader(f, delimiter="\t"), 1):
                if not row:
                    continue
                if len(row) != len(fields):
                    raise DetectorInputError(f"{path}: line {line_no}: {len(row)} fields, --tsv-fields names {len(fields)}")
                r = dict(zip(fields, row))
                image_id = r["image_id"]
                where = f"{path}: line {line_no}"
                try:
                    n, w, h = int(r["num_boxes"]), float(r["image_w"]), float(r["image_h"])
                except ValueError:
                    raise DetectorInputError(f"{where}: image {image_id!r}: num_boxes/image_w/image_h are not numbers")
                if n < 1:
                    raise DetectorInputError(f"{where}: image {image_id!r}: zero regions, expected at least 1")
                boxes = _b64(where, image_id, "boxes", r["boxes"], np.float32, n)
                features = _b64(where, image_id, "features", r["features"], np.float32, n)
                objects = _b64(where, image_id, "objects_id", r["objects_id"], (), n).reshape(-1) \
                    if "objects_id" in r else None
                cls_prob = _b64(where, image_id, "cls_prob", r["cls_prob"], np.float32, n) if "cls_prob" in r else None
                classes, probs = classes_from(where, image_id, objects, cls_prob, num_classes)
                yield Image(where, image_id, features, boxes, classes, w, h, probs)


def _first(npz, names):
    for name in names:
        if name in npz.files:
            return npz[name]
    return None


def read_npz(paths, num_classes, feat_dim=None, **unused):
    files = []
    for p in paths:
        files += sorted(glob.glob(os.path.join(p, "*.npz"))) if os.path.isdir(p) else [p]
    if not files:
        raise DetectorInputError(f"{', '.join(paths)}: no .npz files")
    yield len(files)
    for path in files:
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
        if features.ndim == 2 and feat_dim and features.shape[0] == feat_dim and features.shape[1] != feat_dim:
            features = features.T  # some extractors store D x N
        classes, probs = classes_from(path, image_id, objects, cls_prob, num_classes)
        yield Image(path, image_id, features, boxes.astype(np.float32), classes, float(w), float(h), probs)


def read_hdf5(paths, num_classes, **unused):
    import h5py

    files = []
    for path in paths:
        if not os.path.isfile(path):
            raise DetectorInputError(f"{path}: no such file")
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise DetectorInputError(f"{path}: not an HDF5 file ({str(e).splitlines()[0][:160]})")
        need = [k for k in ("image_id", "wh", "features") if k not in f]
        if "bbox" not in f and "boxes" not in f:
            need.append("bbox")
        if not any(k in f for k in ("objects", "object", "distribution")):
            need.append("objects")
        if need:
            f.close()
            raise DetectorInputError(f"{path}: not the reference feature layout (no {', '.join(need)}; has {', '.join(f.keys()) if f else ''})")
        files.append((path, f))
    yield sum(len(f["image_id"]) for _, f in files)
    for path, f in files:
        with f:
            ids = [x.decode() if isinstance(x, bytes) else str(x) for x in f["image_id"][:]]
            wh = f["wh"][:].astype(np.float64)
            counts = f["num_boxes"][:] if "num_boxes" in f else np.full(len(ids), f["features"].shape[1])
            boxes_ds = f["bbox"] if "bbox" in f else f["boxes"]
            hw = _reference_wh_order(path, f, boxes_ds, wh, counts)
            obj_ds = f["objects"] if "objects" in f else f.get("object")
            for i, image_id in enumerate(ids):
                n = int(counts[i])
                if n < 1:
                    raise DetectorInputError(f"{path}: image {image_id!r}: zero regions, expected at least 1")
                if obj_ds is not None:
                    classes, probs = obj_ds[i, :n].astype(np.int64), None
                else:
                    classes, probs = classes_from(path, image_id, None, f["distribution"][i, :n], num_classes)
                h, w = wh[i] if hw else wh[i][::-1]
                yield Image(path, image_id, f["features"][i, :n], boxes_ds[i, :n].astype(np.float32), classes,
                            float(w), float(h), probs)


def _reference_wh_order(path, f, boxes_ds, wh, counts, sample=256):
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


READERS = {"mmf": read_mmf, "tsv": read_tsv, "npz": read_npz, "hdf5": read_hdf5}


# ---- writer ----------------------------------------------------------------------------------------

def convert(fmt, sources, manifest, images_per_shard=20000, feat_dim=None, num_classes=1600, max_regions=100,
            with_class_probs=False, tsv_fields=TSV_FIELDS, progress=True):
    """Read ``sources`` in format ``fmt`` and write ``manifest`` (+ its shards); returns the image count."""
    from tqdm import tqdm

    if fmt not in READERS:
        raise DetectorInputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if images_per_shard < 1:
        raise DetectorInputError("--images-per-shard must be at least 1")
    out_dir = os.path.dirname(os.path.abspath(manifest))
    stem = os.path.basename(manifest)
    stem = stem[:-len(".json")] if stem.endswith(".json") else stem
    os.makedirs(out_dir, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{stem}-regions-", dir=out_dir)
    writer, shard_names, seen, count = None, [], set(), 0
    try:
        images = READERS[fmt](sources, num_classes=num_classes, feat_dim=feat_dim, tsv_fields=tsv_fields)
        total = next(images)
        for img in tqdm(images, total=total, disable=not progress, unit="img", desc=stem):
            features = np.asarray(img.features)
            if feat_dim is None:
                feat_dim = int(features.shape[1]) if features.ndim == 2 else -1
            if img.image_id in seen:
                raise DetectorInputError(f"{img.source}: image {img.image_id!r} appears twice")
            check_image(img.source, img.image_id, features.astype(np.float32, copy=False), img.boxes,
                        np.asarray(img.classes), img.width, img.height, feat_dim, num_classes, max_regions)
            if with_class_probs and img.probs is None:
                raise DetectorInputError(f"{img.source}: image {img.image_id!r}: no class distribution "
                                         f"(cls_prob / distribution) for --with-class-probs")
            if writer is None or len(writer) >= images_per_shard:
                if writer is not None:
                    writer.close()
                shard_names.append(f"{stem}.{len(shard_names)}.h5")
                writer = RegionShardWriter(os.path.join(stage, shard_names[-1]), feat_dim, num_classes,
                                           with_class_probs=with_class_probs, max_regions=max_regions)
            writer.add(img.image_id, features, img.boxes, img.classes, img.width, img.height,
                       img.probs if with_class_probs else None)
            seen.add(img.image_id)
            count += 1
        if writer is None:
            raise DetectorInputError(f"{', '.join(sources)}: no images")
        writer.close()
        writer = None
        finals = []
        for name in shard_names:
            final = os.path.join(out_dir, name)
            os.replace(os.path.join(stage, name), final)
            finals.append(final)
        write_manifest(manifest, finals, feat_dim, num_classes)
    except RegionDataError as e:
        raise DetectorInputError(str(e))
    finally:
        if writer is not None:
            writer.abort()
        shutil.rmtree(stage, ignore_errors=True)
    return count


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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    try:
        n = convert(a.format, a.sources, a.manifest, a.images_per_shard, a.feat_dim, a.num_classes, a.max_regions,
                    a.with_class_probs, a.tsv_fields, progress=not a.quiet)
    except M3PInputError as e:
        sys.exit(f"m3p-import-regions: {e}")
    print(f"{a.manifest}: {n} images", file=sys.stderr)


if __name__ == "__main__":
    main()
