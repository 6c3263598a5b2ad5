"""HDF5 store of detector region features, sharded and listed in a JSON manifest.

Written by hand because no library does this: fairseq's indexed datasets hold token ids,
not float feature matrices with boxes and detector outputs.

One shard (``*.h5``) holds, for N images and M regions in all:

    image_ids    (N,)      utf-8 strings
    offsets      (N+1,)    int64, image i owns rows offsets[i]:offsets[i+1] of the flat arrays
    image_wh     (N, 2)    float32, image width and height in pixels
    features     (M, D)    float16 (D = 2048 for the usual Faster R-CNN detectors)
    boxes        (M, 4)    float32, x1, y1, x2, y2 in pixels
    classes      (M,)      int32, the detector's top-1 class
    class_probs  (M, K)    float16, optional: the detector's class distribution

and the attributes ``format="m3p-regions"``, ``version``, ``feat_dim``, ``num_classes``. Shards
written here carry HDF5's Fletcher-32 checksum on every chunk of the flat arrays, so bytes damaged
after writing fail the read (one line naming shard and image) instead of becoming wrong numbers, and
every image read is checked as the writer checks it (finite features, boxes finite and inside the
image: ``geometry_problem``), so a store written by other tools cannot feed a NaN box to a model.
A manifest (``*.json``) names the shards of one corpus/split; the reader sees them as one store and
opens each shard lazily, once per process, reading an image as one contiguous slice.

The table the reader needs before touching a shard (ids, where each image's rows are, region
counts, image sizes) is kept in fixed-width numpy arrays, never as one Python object per image:
fairseq's data-loader workers are forked, and a worker copies every page of Python objects it
touches (reference counts), while numpy buffers stay shared. Converters also write that table
beside the manifest (``train.json`` -> ``train.index``, see ``RegionIndex``) and readers memory-map
it, so all processes of a machine share one copy through the page cache. Without that file, or
when a shard changed after it was written, the table is built from the shards on open.
"""
import atexit
import json
import logging
import math
import mmap
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Dict, List

import numpy as np

from ..errors import M3PInputError
from ..outputs import write_atomically

logger = logging.getLogger(__name__)

FORMAT = "m3p-regions"
MANIFEST_FORMAT = "m3p-regions-manifest"
INDEX_FORMAT = "m3p-regions-index"
INDEX_MAGIC = b"M3PRIDX\n"
INDEX_ALIGN = 64
INDEX_SHARD_KEYS = {"path", "size", "mtime_ns", "num_images", "num_regions"}
VERSION = 1
CHUNK_CACHE_BYTES = 64 << 20  # per open shard: h5py's default (1 MB) re-reads chunks of nearby images
# the writer hands HDF5 blocks of about this size: one resize + write per image cost ~0.7 ms
WRITE_BUFFER_BYTES = 16 << 20
FLOAT16_MAX = float(np.finfo(np.float16).max)
REQUIRED_KEYS = ("image_ids", "offsets", "image_wh", "features", "boxes", "classes")
H5_READ_ERRORS = (OSError, KeyError, RuntimeError, ValueError)  # what h5py raises on damaged files


class RegionDataError(M3PInputError):
    """Bad region data; the message names the file and the image id."""

    def __init__(self, message=""):
        super().__init__(_worker_line(str(message), type(self).__name__))


def _worker_line(message, name):
    """The line a data-loader worker raised. torch re-raises a worker's exception in the main process
    as ``type("Caught X in DataLoader worker process N.\\nOriginal Traceback ...\\n...X: <line>")``:
    without this the one-line error would reach the user as a page of traceback."""
    first = message.split("\n", 1)[0]
    if not (first.startswith("Caught ") and "DataLoader worker process" in first):
        return message
    _, found, line = message.rstrip().rsplit("\n", 1)[-1].partition(f"{name}: ")
    return line if found else message


def _first_line(exc):
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _h5py():
    import h5py

    return h5py


def check_image(path, image_id, features, boxes, classes, width, height, feat_dim, num_classes,
                max_regions=None):
    """Validate one image's detector output; raise RegionDataError naming file and id.

    Few numpy calls on purpose: converters run this on millions of small images."""
    where = f"{path}: image {image_id!r}"
    n = features.shape[0] if features.ndim == 2 else -1
    if features.ndim != 2 or features.shape[1] != feat_dim:
        raise RegionDataError(f"{where}: features have shape {tuple(features.shape)}, expected (regions, {feat_dim})")
    if n < 1:
        raise RegionDataError(f"{where}: zero regions, expected at least 1")
    if max_regions is not None and n > max_regions:
        raise RegionDataError(f"{where}: {n} regions, expected at most {max_regions}")
    if boxes.shape != (n, 4):
        raise RegionDataError(f"{where}: boxes have shape {tuple(boxes.shape)}, expected ({n}, 4)")
    if classes.shape != (n,):
        raise RegionDataError(f"{where}: classes have shape {tuple(classes.shape)}, expected ({n},)")
    lo, hi = float(features.min()), float(features.max())  # NaN propagates through both
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise RegionDataError(f"{where}: features contain NaN or Inf")
    if max(hi, -lo) > FLOAT16_MAX:
        raise RegionDataError(f"{where}: features reach {max(hi, -lo):g}, beyond float16's {FLOAT16_MAX:g} "
                              f"(the store keeps float16)")
    problem = geometry_problem(boxes, width, height)
    if problem is not None:
        raise RegionDataError(f"{where}: {problem}")
    if num_classes and (classes.min() < 0 or classes.max() >= num_classes):
        raise RegionDataError(f"{where}: detector class outside [0, {num_classes})")


def geometry_problem(boxes, width, height):
    """What is wrong with an image's (n, 4) pixel boxes x1, y1, x2, y2 and its size, or None: checked where
    a store is written and where it is read (a NaN box must never become a number the model sees)."""
    box_lo, box_hi = boxes.min(axis=0).tolist(), boxes.max(axis=0).tolist()
    if not all(math.isfinite(v) for v in box_lo + box_hi):
        return "boxes contain NaN or Inf"
    if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
        return f"image size {width}x{height} is not positive"
    tol = 1.0  # detectors round to the pixel grid
    if box_lo[0] < -tol or box_lo[1] < -tol or box_hi[2] > width + tol or box_hi[3] > height + tol \
            or (boxes[:, 2:] < boxes[:, :2]).any():
        return f"a box lies outside the {width:g}x{height:g} image or has x2<x1 / y2<y1"
    return None


class RegionShardWriter:
    """Append images to one HDF5 shard; the file appears under its name only on close().

    >>> with RegionShardWriter("train.0.h5", feat_dim=2048, num_classes=1600) as w:
    ...     w.add("img1", feats, boxes, classes, width=640, height=480)

    Images are validated as they come and written in blocks of about WRITE_BUFFER_BYTES.
    """

    def __init__(self, path, feat_dim=2048, num_classes=1600, with_class_probs=False, max_regions=None,
                 chunk_rows=32):
        h5py = _h5py()
        self.path = path
        self.tmp_path = path + ".tmp"
        self.feat_dim, self.num_classes, self.max_regions = feat_dim, num_classes, max_regions
        self.with_class_probs = with_class_probs
        self._f = h5py.File(self.tmp_path, "w")
        self._f.attrs.update(format=FORMAT, version=VERSION, feat_dim=feat_dim, num_classes=num_classes)
        # small chunks: an image is read at random and h5py reads whole chunks (32 x 2048 fp16 = 128 KB)
        rows = max(1, chunk_rows)
        columns = {"features": ((feat_dim,), np.float16), "boxes": ((4,), np.float32), "classes": ((), np.int32)}
        if with_class_probs:
            columns["class_probs"] = ((num_classes,), np.float16)
        self._datasets = {name: self._f.create_dataset(name, (0,) + shape, dtype, maxshape=(None,) + shape,
                                                       chunks=(rows,) + shape, fletcher32=True)
                          for name, (shape, dtype) in columns.items()}
        self._pending: Dict[str, list] = {name: [] for name in columns}
        row_bytes = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                        for shape, dtype in columns.values())
        self._flush_rows = max(rows, WRITE_BUFFER_BYTES // row_bytes)
        self._pending_rows = 0
        self._written = 0
        self._ids: List[str] = []
        self._offsets = [0]
        self._wh: List[tuple] = []
        self._seen = set()

    def add(self, image_id, features, boxes, classes, width, height, class_probs=None, source=None):
        """``source``: what errors name instead of the shard (the converter's input file and line)."""
        where = self.path if source is None else source
        image_id = str(image_id)
        features = np.asarray(features)
        boxes = np.asarray(boxes, dtype=np.float32)
        classes = np.asarray(classes).astype(np.int64)
        if image_id in self._seen:
            raise RegionDataError(f"{where}: image {image_id!r} appears twice")
        check_image(where, image_id, features, boxes, classes, float(width), float(height),
                    self.feat_dim, self.num_classes, self.max_regions)
        if self.with_class_probs:
            if class_probs is None:
                raise RegionDataError(f"{where}: image {image_id!r} has no class distribution")
            self._pending["class_probs"].append(np.asarray(class_probs, dtype=np.float16))
        n = features.shape[0]
        self._pending["features"].append(features.astype(np.float16))
        self._pending["boxes"].append(boxes)
        self._pending["classes"].append(classes.astype(np.int32))
        self._ids.append(image_id)
        self._seen.add(image_id)
        self._offsets.append(self._offsets[-1] + n)
        self._wh.append((float(width), float(height)))
        self._pending_rows += n
        if self._pending_rows >= self._flush_rows:
            self._flush()

    def _flush(self):
        if not self._pending_rows:
            return
        start, end = self._written, self._written + self._pending_rows
        for name, ds in self._datasets.items():
            block = np.concatenate(self._pending[name])
            ds.resize(end, axis=0)
            ds[start:end] = block
            self._pending[name] = []
        self._written, self._pending_rows = end, 0

    def close(self):
        if self._f is None:
            return
        try:
            self._flush()
            h5py = _h5py()
            self._f.create_dataset("image_ids", data=np.array(self._ids, dtype=object), dtype=h5py.string_dtype())
            self._f.create_dataset("offsets", data=np.asarray(self._offsets, dtype=np.int64))
            self._f.create_dataset("image_wh", data=np.asarray(self._wh, dtype=np.float32).reshape(-1, 2))
            self._f.close()
        except BaseException:
            self.abort()
            raise
        self._f = None
        os.replace(self.tmp_path, self.path)

    def abort(self):
        if self._f is not None:
            try:
                self._f.close()
            except Exception:  # closing a file whose write failed; it is removed next
                pass
            self._f = None
        if os.path.exists(self.tmp_path):
            os.remove(self.tmp_path)

    def __len__(self):
        return len(self._ids)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ---- manifests ---------------------------------------------------------------------------------

def read_manifest(path):
    """The manifest's JSON document, checked to be one."""
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except (ValueError, UnicodeDecodeError) as e:
        raise RegionDataError(f"{path}: not a JSON region manifest ({e.__class__.__name__})")
    except OSError as e:
        raise RegionDataError(f"{path}: cannot read the region manifest ({e.strerror or _first_line(e)})")
    if not isinstance(meta, dict) or meta.get("format") != MANIFEST_FORMAT or "shards" not in meta:
        raise RegionDataError(f"{path}: not an m3p region manifest (format={meta.get('format') if isinstance(meta, dict) else None!r})")
    return meta


def manifest_shards(path, meta):
    base = os.path.dirname(os.path.abspath(path))
    return [os.path.join(base, s["path"]) for s in meta["shards"]]


def index_path(manifest):
    """Where the per-image table of a manifest lives: ``train.json`` -> ``train.index``."""
    stem = manifest[:-len(".json")] if manifest.endswith(".json") else manifest
    return stem + ".index"


def write_manifest(path, shard_paths, feat_dim, num_classes, index=False, extra=None, staging=None, staged=None):
    """Write the manifest listing shards (paths stored relative to the manifest).

    ``index``: also write the per-image table beside it (True: read from the shards, which checks
    them first and writes nothing if one is bad; or a RegionIndex of these shards built already).
    Without it, a table left at that place by an earlier manifest is removed. ``extra``: more keys
    for the document (a converted slice records itself under "slice"). ``staging``: an
    ``outputs.Staging`` the index and the manifest join (last, after the shards it holds already),
    ``staged``: where those shards are until it commits."""
    if index is True:
        index = RegionIndex.build(staged or shard_paths, path)
    elif index is False:
        index = None
    base = os.path.dirname(os.path.abspath(path))
    if index is not None:
        sizes = list(zip(index.shard_images, index.shard_regions))
    else:
        h5py = _h5py()
        sizes = []
        for sp in staged or shard_paths:
            with h5py.File(sp, "r") as f:
                sizes.append((int(f["offsets"].shape[0] - 1), int(f["offsets"][-1])))
    shards = [{"path": os.path.relpath(os.path.abspath(sp), base), "num_images": int(n), "num_regions": int(m)}
              for sp, (n, m) in zip(shard_paths, sizes)]
    doc = {"format": MANIFEST_FORMAT, "version": VERSION, "feat_dim": int(feat_dim),
           "num_classes": int(num_classes), "shards": shards, **(extra or {})}

    def dump(tmp):
        with open(tmp, "w") as fh:
            json.dump(doc, fh, indent=1)

    if index is not None:
        index.write(index_path(path), shard_paths, staging, staged)
    elif os.path.exists(index_path(path)):
        os.remove(index_path(path))
    write_atomically(path, dump, staging)


def merge_manifests(out, inputs):
    """One manifest (and its index) over the shards of several: the slices of one conversion run on
    several machines (``m3p-import-regions --slice K/N``), or any stores of one corpus. Slices are put
    in slice order and must all be there; other manifests keep the order given. Shards stay where
    they are. A single input rewrites that manifest's index. Returns the number of images."""
    docs = [(p, read_manifest(p)) for p in inputs]
    if not docs:
        raise RegionDataError(f"{out}: no manifests to merge")
    slices = [d.get("slice") for _, d in docs]
    if any(s is not None for s in slices):
        docs = _slices_in_order(out, docs)
    first_path, first = docs[0]
    shard_paths = []
    for p, d in docs:
        for key in ("feat_dim", "num_classes"):
            if d.get(key) != first.get(key):
                raise RegionDataError(f"{p}: {key} {d.get(key)}, {first_path} has {first.get(key)}")
        shard_paths += manifest_shards(p, d)
    index = RegionIndex.build(shard_paths, out, first.get("feat_dim"), first_path)
    write_manifest(out, shard_paths, first["feat_dim"], first["num_classes"], index=index)
    return len(index)


def _slices_in_order(out, docs):
    """``docs`` sorted by slice number, checked to be every slice of one conversion."""
    keys = ("count", "format", "units")
    ref_path, ref = next((p, d["slice"]) for p, d in docs if d.get("slice") is not None)
    have = {}
    for p, d in docs:
        s = d.get("slice")
        if s is None:
            raise RegionDataError(f"{p}: not a slice (--slice K/N), {ref_path} is")
        if any(s.get(k) != ref.get(k) for k in keys):
            raise RegionDataError(f"{p}: slice of another conversion ({', '.join(f'{k}={s.get(k)}' for k in keys)}; "
                                  f"{ref_path} has {', '.join(f'{k}={ref.get(k)}' for k in keys)})")
        if s["index"] in have:
            raise RegionDataError(f"{p}: slice {s['index']}/{s['count']} given twice (also {have[s['index']][0]})")
        have[s["index"]] = (p, d)
    missing = [k for k in range(ref["count"]) if k not in have]
    if missing:
        names = ", ".join(f"{k}/{ref['count']}" for k in missing)
        raise RegionDataError(f"{out}: slice {names} missing (have {', '.join(p for p, _ in docs)})")
    return [have[k] for k in range(ref["count"])]


# ---- the per-image table -------------------------------------------------------------------------

def _shard_layout(f, sp):
    """(feature size, num_classes, images, regions, has class_probs) of an open shard, its keys checked."""
    missing = [k for k in REQUIRED_KEYS if k not in f]
    if missing:
        raise RegionDataError(f"{sp}: region shard lacks {', '.join(missing)}")
    feats = f["features"]
    d = int(feats.shape[1]) if feats.ndim == 2 else -1
    return d, int(f.attrs.get("num_classes", 0)), int(f["offsets"].shape[0]) - 1, int(feats.shape[0]), \
        "class_probs" in f


class _ShardCheck:
    """Opens the shards of a store one by one and checks that they agree on the feature size (with
    each other and with the manifest)."""

    def __init__(self, manifest_feat_dim=None, manifest=None):
        self.manifest_feat_dim, self.manifest = manifest_feat_dim, manifest
        self.feat_dim = self.num_classes = None
        self.has_class_probs = True

    def open(self, sp):
        try:
            return _h5py().File(sp, "r")
        except OSError as e:
            raise RegionDataError(f"{sp}: cannot open region shard ({_first_line(e)})")

    def layout(self, f, sp):
        d, k, n, m, probs = _shard_layout(f, sp)
        if self.feat_dim is None:
            self.feat_dim, self.num_classes = d, k
        elif d != self.feat_dim:
            raise RegionDataError(f"{sp}: features are {d}-d, other shards are {self.feat_dim}-d")
        if self.manifest_feat_dim is not None and d != int(self.manifest_feat_dim):
            raise RegionDataError(f"{sp}: features are {d}-d, manifest {self.manifest} says {self.manifest_feat_dim}")
        self.has_class_probs &= probs
        return n, m


def _id_array(raw):
    """Image ids as one fixed-width bytes array (utf-8), whatever string type the shard used."""
    if raw.dtype.kind == "S":
        return raw
    if raw.dtype.kind == "U":
        return np.char.encode(raw, "utf-8")
    try:
        return raw.astype(np.bytes_)  # h5py reads utf-8 strings as bytes objects
    except (UnicodeEncodeError, TypeError, ValueError):
        return np.array([x if isinstance(x, bytes) else str(x).encode("utf-8") for x in raw], dtype=np.bytes_)


class RegionIndex:
    """The per-image table of a store as fixed-width numpy arrays (no per-image Python object):

        ids     (N,)    S<L>     utf-8 image ids by row, zero-padded to the longest
        order   (N,)    int64    rows sorted by id (a lookup is a binary search through it)
        start   (N,)    int64    first row of the image in its shard's flat arrays
        count   (N,)    int32    regions of the image
        wh      (N, 2)  float32  image width and height

    Rows run through the shards in manifest order. As a file (``write``, ``read``): the 8 bytes
    ``M3PRIDX\\n``, the header's length (uint64, little-endian), a JSON header (format, version,
    feat_dim, num_classes, has_class_probs; per shard its path relative to the file, size, mtime_ns,
    num_images, num_regions; per array its dtype, shape and offset from the data start), then the
    arrays from the first 64-byte boundary after the header, each at a 64-byte aligned offset.
    """

    ARRAYS = ("ids", "order", "start", "count", "wh")

    def __init__(self, arrays, shard_images, shard_regions, feat_dim, num_classes, has_class_probs, source=None,
                 file_identity=None):
        self.ids, self.order, self.start, self.count, self.wh = (arrays[name] for name in self.ARRAYS)
        self.shard_images = [int(n) for n in shard_images]
        self.shard_regions = [int(m) for m in shard_regions]
        self.shard_first = np.concatenate([[0], np.cumsum(self.shard_images, dtype=np.int64)]).astype(np.int64)
        self.feat_dim, self.num_classes, self.has_class_probs = feat_dim, num_classes, has_class_probs
        self.source = source  # the file the arrays map; None when built in memory
        self.file_identity = file_identity

    def __len__(self):
        return len(self.ids)

    def shard_of(self, row):
        return int(np.searchsorted(self.shard_first, row, side="right")) - 1

    def __reduce__(self):
        # a mapped table travels as its file's name (a spawned worker maps it again, nothing is
        # copied) while that file is still the one mapped; otherwise by value
        if self.source is not None and _file_identity(self.source) == self.file_identity:
            return _map_index, (self.source, self.file_identity)
        arrays = {name: np.array(getattr(self, name)) for name in self.ARRAYS}
        return RegionIndex, (arrays, self.shard_images, self.shard_regions, self.feat_dim, self.num_classes,
                             self.has_class_probs)

    # -- from the shards ---------------------------------------------------------------------------
    @classmethod
    def build(cls, shard_paths, where, manifest_feat_dim=None, manifest=None):
        """Read and check every shard's ids, offsets and image sizes; ``where`` names the store in
        errors about the store as a whole (an id in two places)."""
        check = _ShardCheck(manifest_feat_dim, manifest)
        ids, offsets, wh, images, regions = [], [], [], [], []
        for sp in shard_paths:
            with check.open(sp) as f:
                n, m = check.layout(f, sp)
                try:
                    off = f["offsets"][:].astype(np.int64)
                    sid = _id_array(f["image_ids"][:])
                    size = f["image_wh"][:].astype(np.float32)
                except H5_READ_ERRORS as e:
                    raise RegionDataError(f"{sp}: cannot read the shard's ids and offsets ({_first_line(e)})")
            if len(off) != len(sid) + 1 or off[0] != 0 or (np.diff(off) < 0).any() or off[-1] != m:
                raise RegionDataError(f"{sp}: offsets do not match image_ids/features (truncated or corrupt shard)")
            zero = np.flatnonzero(np.diff(off) == 0)
            if len(zero):
                raise RegionDataError(f"{sp}: image {sid[zero[0]].decode('utf-8')!r} has zero regions")
            if size.shape != (len(sid), 2):
                raise RegionDataError(f"{sp}: image_wh has shape {size.shape}, expected ({len(sid)}, 2)")
            ids.append(sid)
            offsets.append(off)
            wh.append(size)
            images.append(len(sid))
            regions.append(m)
        all_ids = np.concatenate(ids) if ids else np.zeros(0, "S1")
        order = np.argsort(all_ids, kind="stable").astype(np.int64)
        by_id = all_ids[order]
        dup = np.flatnonzero(by_id[1:] == by_id[:-1])
        if len(dup):
            raise RegionDataError(f"{where}: image {by_id[dup[0]].decode('utf-8')!r} appears in more than one place")
        arrays = {
            "ids": all_ids, "order": order,
            "start": np.concatenate([o[:-1] for o in offsets]) if offsets else np.zeros(0, np.int64),
            "count": np.concatenate([np.diff(o) for o in offsets]).astype(np.int32) if offsets else np.zeros(0, np.int32),
            "wh": np.concatenate(wh) if wh else np.zeros((0, 2), np.float32),
        }
        return cls(arrays, images, regions, check.feat_dim, check.num_classes, check.has_class_probs)

    # -- as a file ---------------------------------------------------------------------------------
    def write(self, path, shard_paths, staging=None, staged=None):
        """The table as the file ``path`` (for ``shard_paths``: with ``staging``, an outputs.Staging, the shards
        are still at ``staged`` and the file joins them there)."""
        base = os.path.dirname(os.path.abspath(path))
        shards = []
        for sp, now, n, m in zip(shard_paths, staged or shard_paths, self.shard_images, self.shard_regions):
            st = os.stat(now)  # a rename into place keeps size and time
            shards.append({"path": os.path.relpath(os.path.abspath(sp), base), "size": st.st_size,
                           "mtime_ns": st.st_mtime_ns, "num_images": n, "num_regions": m})
        specs, offset = {}, 0
        for name in self.ARRAYS:
            a = np.ascontiguousarray(getattr(self, name))
            specs[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset}
            offset += -(-a.nbytes // INDEX_ALIGN) * INDEX_ALIGN
        header = json.dumps({"format": INDEX_FORMAT, "version": VERSION, "feat_dim": self.feat_dim,
                             "num_classes": self.num_classes, "has_class_probs": bool(self.has_class_probs),
                             "shards": shards, "arrays": specs}).encode("utf-8")

        def dump(tmp):
            with open(tmp, "wb") as fh:
                fh.write(INDEX_MAGIC + len(header).to_bytes(8, "little") + header)
                data_start = _data_start(len(header))
                for name in self.ARRAYS:
                    fh.seek(data_start + specs[name]["offset"])
                    fh.write(np.ascontiguousarray(getattr(self, name)).tobytes())

        write_atomically(path, dump, staging)

    @classmethod
    def read(cls, path, shard_paths, manifest_feat_dim=None, manifest=None):
        """The table in ``path`` memory-mapped, or None (said in the log) when there is none or it no
        longer describes ``shard_paths`` exactly (other shards, or a shard's size or time changed)."""
        if not os.path.exists(path):
            return None
        header, mm = _read_index_file(path)
        if header is None:
            return _stale(path, "not an index file of this version")
        base = os.path.dirname(os.path.abspath(path))
        want = [os.path.relpath(os.path.abspath(sp), base) for sp in shard_paths]
        if [s.get("path") for s in header["shards"]] != want:
            return _stale(path, "it lists other shards than the manifest")
        for s, sp in zip(header["shards"], shard_paths):
            try:
                st = os.stat(sp)
            except OSError:
                return None  # building from the shards names the missing one
            if (st.st_size, st.st_mtime_ns) != (s["size"], s["mtime_ns"]):
                return _stale(path, f"{sp} changed after it was written")
        check = _ShardCheck(manifest_feat_dim, manifest)
        for s, sp in zip(header["shards"], shard_paths):
            with check.open(sp) as f:
                n, m = check.layout(f, sp)
            if (n, m) != (s["num_images"], s["num_regions"]):
                return _stale(path, f"{sp} has {n} images and {m} regions, the index {s['num_images']} and {s['num_regions']}")
        arrays = _arrays_of(header, mm)
        total = sum(s["num_images"] for s in header["shards"])
        if arrays is None or any(len(arrays[name]) != total for name in cls.ARRAYS):
            return _stale(path, "its arrays do not match its header (truncated?)")
        return _index_of_file(path, header, arrays)


def _data_start(header_len):
    return -(-(len(INDEX_MAGIC) + 8 + header_len) // INDEX_ALIGN) * INDEX_ALIGN


def _file_identity(path_or_fd):
    try:
        st = os.stat(path_or_fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _read_index_file(path):
    """(header, read-only map of the file), or (None, None) if it is not an index file; the header
    also holds the file's identity (device, inode, size, time) as "_identity"."""
    with open(path, "rb") as fh:
        if fh.read(len(INDEX_MAGIC)) != INDEX_MAGIC:
            return None, None
        try:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        except (ValueError, UnicodeDecodeError, MemoryError):
            return None, None
        if not isinstance(header, dict) or header.get("format") != INDEX_FORMAT or header.get("version") != VERSION \
                or not isinstance(header.get("arrays"), dict) or not isinstance(header.get("shards"), list) \
                or not all(isinstance(s, dict) and INDEX_SHARD_KEYS <= s.keys() for s in header["shards"]):
            return None, None
        header["_data_start"] = _data_start(fh.tell() - len(INDEX_MAGIC) - 8)
        header["_identity"] = _file_identity(fh.fileno())
        return header, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


def _arrays_of(header, mm):
    arrays = {}
    for name in RegionIndex.ARRAYS:
        spec = header["arrays"].get(name)
        try:
            dtype = np.dtype(spec["dtype"])
            if dtype.kind not in "Sifu":  # never objects: they would be pointers read from a file
                return None
            count = int(np.prod(spec["shape"], dtype=np.int64))
            arrays[name] = np.frombuffer(mm, dtype=dtype, count=count,
                                         offset=header["_data_start"] + spec["offset"]).reshape(spec["shape"])
        except (TypeError, KeyError, ValueError):
            return None
    return arrays


def _map_index(path, identity):
    try:
        header, mm = _read_index_file(path)
    except OSError as e:
        raise RegionDataError(f"{path}: cannot map the region index ({_first_line(e)})")
    arrays = _arrays_of(header, mm) if header is not None and header["_identity"] == identity else None
    if arrays is None:
        raise RegionDataError(f"{path}: the region index changed while the store was open")
    return _index_of_file(path, header, arrays)


def _index_of_file(path, header, arrays):
    shards = header["shards"]
    return RegionIndex(arrays, [s["num_images"] for s in shards], [s["num_regions"] for s in shards],
                       header["feat_dim"], header["num_classes"], header["has_class_probs"], source=path,
                       file_identity=header["_identity"])


def _stale(path, why):
    logger.warning(f"{path}: not used, {why}; reading image ids from the shards instead "
                   f"(m3p-merge-manifests MANIFEST MANIFEST rewrites it)")
    return None


class ImageIds(Sequence):
    """A store's image ids by row, decoded on access from one fixed-width bytes array."""

    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array

    def __len__(self):
        return len(self.array)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ImageIds(self.array[i])
        return self.array[i].decode("utf-8")

    def __iter__(self):
        return (x.decode("utf-8") for x in self.array)

    def __repr__(self):
        return f"ImageIds({len(self)} ids)"


# ---- reading -------------------------------------------------------------------------------------

class RegionStore:
    """Read-only view of all shards of a manifest (or of a single ``.h5`` shard).

    The per-image table (``RegionIndex``) is memory-mapped from the manifest's index file or built
    from the shards; features are read on demand, one contiguous slice per image. h5py handles do not
    survive fork, so shards are opened lazily and re-opened when the process id changes (fairseq's
    data loader workers).
    """

    def __init__(self, path, cache_mb=0):
        """``cache_mb``: keep up to that many MB of the images read (as stored: float16 features) in
        memory, the least recently used dropped first; 0: every read goes to the shard."""
        self.path = path
        self.cache_bytes = int(cache_mb * (1 << 20))
        self._cache: "OrderedDict[int, tuple]" = OrderedDict()
        self._cached_bytes = 0
        if not os.path.exists(path):
            raise RegionDataError(f"{path}: region store not found")
        if path.endswith(".h5") or path.endswith(".hdf5"):
            shard_paths, meta, index = [path], None, None
        else:
            meta = read_manifest(path)
            shard_paths = manifest_shards(path, meta)
            index = RegionIndex.read(index_path(path), shard_paths, meta.get("feat_dim"), path)
        if index is None:
            index = RegionIndex.build(shard_paths, path, meta.get("feat_dim") if meta else None, path)
        self.shard_paths = shard_paths
        self.index = index
        self.feat_dim = index.feat_dim if meta is None else int(meta.get("feat_dim", index.feat_dim))
        self.num_classes = index.num_classes if meta is None else int(meta.get("num_classes", index.num_classes))
        self.has_class_probs = index.has_class_probs
        self._handles: Dict[int, object] = {}
        self._pid = None

    def __len__(self):
        return len(self.index)

    # views of the table (properties, so that a pickled store carries the table once, as the index pickles)
    @property
    def image_ids(self) -> ImageIds:
        return ImageIds(self.index.ids)

    @property
    def num_regions(self) -> np.ndarray:
        return self.index.count

    @property
    def image_wh(self) -> np.ndarray:
        return self.index.wh

    def index_of(self, image_id, source="") -> int:
        """Row of ``image_id``; a missing id raises an error naming ``source`` (the caption file)."""
        return int(self.indices_of([image_id], source)[0])

    def indices_of(self, image_ids: Sequence, source="") -> np.ndarray:
        """Rows of many ids at once (one vectorized binary search); the first missing one raises."""
        ids, order = self.index.ids, self.index.order
        queries = [str(x).encode("utf-8") for x in image_ids]
        if not queries:
            return np.zeros(0, np.int64)
        wanted = np.array(queries, dtype=ids.dtype)  # longer ids are cut here, and found missing below
        lengths = np.fromiter(map(len, queries), dtype=np.int64, count=len(queries))
        found = np.char.str_len(wanted) == lengths
        if len(ids):
            at = np.minimum(np.searchsorted(ids, wanted, sorter=order), len(ids) - 1)
            rows = order[at]
            found &= ids[rows] == wanted
        else:
            rows, found = np.zeros(len(queries), np.int64), np.zeros(len(queries), bool)
        if not found.all():
            missing = queries[int(np.argmin(found))].decode("utf-8")
            where = f"{source}: " if source else ""
            raise RegionDataError(f"{where}image {missing!r} has no features in {self.path}")
        return rows.astype(np.int64, copy=False)

    def _file(self, si):
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
            # close our files before the interpreter tears h5py down: a handle freed during shutdown
            # can wait forever on h5py's lock
            atexit.register(self.close)
        f = self._handles.get(si)
        if f is None:
            f = _h5py().File(self.shard_paths[si], "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
            self._handles[si] = f
        return f

    def get(self, index: int, with_class_probs=False):
        """One image: dict with float32 ``features`` (n, D), ``boxes`` (n, 4), ``classes`` (n,), ``width``, ``height``."""
        arrays = self._cache.get(index) if self.cache_bytes else None
        if arrays is not None and (arrays[3] is not None or not (with_class_probs and self.has_class_probs)):
            self._cache.move_to_end(index)
        else:
            arrays = self._read(index, with_class_probs)
            if self.cache_bytes:
                self._remember(index, arrays)
        feats, boxes, classes, probs = arrays
        w, h = self.image_wh[index]
        out = {"features": feats.astype(np.float32), "boxes": boxes.astype(np.float32),
               "classes": classes.astype(np.int64), "width": float(w), "height": float(h)}
        if with_class_probs and probs is not None:
            out["class_probs"] = probs.astype(np.float32)
        return out

    def _read(self, index, with_class_probs):
        """The stored arrays of one image (features, boxes, classes, class_probs or None), checked.
        A shard damaged after the store was opened (truncated, bytes changed: the checksum fails)
        raises one line naming the shard and the image."""
        si = self.index.shard_of(index)
        a = int(self.index.start[index])
        b = a + int(self.index.count[index])
        where = f"{self.shard_paths[si]}: image {self.image_ids[index]!r}"
        try:
            f = self._file(si)
            feats, boxes, classes = f["features"][a:b], f["boxes"][a:b], f["classes"][a:b]
            probs = f["class_probs"][a:b] if with_class_probs and "class_probs" in f else None
        except H5_READ_ERRORS as e:
            detail = _first_line(e)
            if "filter returned failure" in detail:  # what HDF5 says when a chunk's Fletcher-32 sum differs
                detail = f"its bytes fail their checksum: the file was damaged after writing; {detail}"
            raise RegionDataError(f"{where} cannot be read ({detail})")
        if len(feats) != b - a or len(boxes) != b - a or len(classes) != b - a:
            raise RegionDataError(f"{where} cannot be read (the shard ends before its rows {a}:{b}: truncated?)")
        if not np.isfinite(feats).all():
            raise RegionDataError(f"{where} has NaN or Inf features")
        w, h = self.image_wh[index]
        problem = geometry_problem(boxes, float(w), float(h))
        if problem is not None:
            raise RegionDataError(f"{where}: {problem}")
        return feats, boxes, classes, probs

    def _remember(self, index, arrays):
        nbytes = (lambda entry: sum(x.nbytes for x in entry if x is not None))
        old = self._cache.pop(index, None)
        if old is not None:
            self._cached_bytes -= nbytes(old)
        size = nbytes(arrays)
        if size > self.cache_bytes:
            return
        while self._cached_bytes + size > self.cache_bytes:
            self._cached_bytes -= nbytes(self._cache.popitem(last=False)[1])
        self._cache[index] = arrays
        self._cached_bytes += size

    def close(self):
        for f in self._handles.values():
            try:
                f.close()
            except Exception:  # already closed by h5py itself
                pass
        self._handles = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, None
        state["_cache"], state["_cached_bytes"] = OrderedDict(), 0  # a worker fills its own
        return state


def spatial_features(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """The paper's 5-d location vector: normalized x1, y1, x2, y2 and the box's area fraction."""
    b = np.empty((boxes.shape[0], 5), dtype=np.float32)
    b[:, 0] = boxes[:, 0] / width
    b[:, 1] = boxes[:, 1] / height
    b[:, 2] = boxes[:, 2] / width
    b[:, 3] = boxes[:, 3] / height
    b[:, 4] = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return np.clip(b, 0.0, 1.0)
