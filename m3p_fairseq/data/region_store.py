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

and the attributes ``format="m3p-regions"``, ``version``, ``feat_dim``, ``num_classes``.
A manifest (``*.json``) names the shards of one corpus/split; the reader sees them as one store,
keeps ids and region counts in memory (so batching never touches a file) and opens each shard
lazily, once per process, reading an image as one contiguous slice.
"""
import atexit
import json
import os
from collections import OrderedDict
from typing import Dict, List, Sequence

import numpy as np

FORMAT = "m3p-regions"
MANIFEST_FORMAT = "m3p-regions-manifest"
VERSION = 1
CHUNK_CACHE_BYTES = 64 << 20  # per open shard: h5py's default (1 MB) re-reads chunks of nearby images
REQUIRED_KEYS = ("image_ids", "offsets", "image_wh", "features", "boxes", "classes")


from ..errors import M3PInputError


class RegionDataError(M3PInputError):
    """Bad region data; the message names the file and the image id."""


def _h5py():
    import h5py

    return h5py


def check_image(path, image_id, features, boxes, classes, width, height, feat_dim, num_classes,
                max_regions=None):
    """Validate one image's detector output; raise RegionDataError naming file and id."""
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
    if not np.all(np.isfinite(features)):
        raise RegionDataError(f"{where}: features contain NaN or Inf")
    if not np.all(np.isfinite(boxes)):
        raise RegionDataError(f"{where}: boxes contain NaN or Inf")
    if not (np.isfinite(width) and np.isfinite(height) and width > 0 and height > 0):
        raise RegionDataError(f"{where}: image size {width}x{height} is not positive")
    tol = 1.0  # detectors round to the pixel grid
    if (boxes[:, 0] < -tol).any() or (boxes[:, 1] < -tol).any() or (boxes[:, 2] > width + tol).any() \
            or (boxes[:, 3] > height + tol).any() or (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise RegionDataError(f"{where}: a box lies outside the {width:g}x{height:g} image or has x2<x1 / y2<y1")
    if num_classes and ((classes < 0).any() or (classes >= num_classes).any()):
        raise RegionDataError(f"{where}: detector class outside [0, {num_classes})")


class RegionShardWriter:
    """Append images to one HDF5 shard; the file appears under its name only on close().

    >>> with RegionShardWriter("train.0.h5", feat_dim=2048, num_classes=1600) as w:
    ...     w.add("img1", feats, boxes, classes, width=640, height=480)
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
        self._feat = self._f.create_dataset("features", (0, feat_dim), np.float16, maxshape=(None, feat_dim),
                                            chunks=(rows, feat_dim))
        self._boxes = self._f.create_dataset("boxes", (0, 4), np.float32, maxshape=(None, 4), chunks=(rows, 4))
        self._cls = self._f.create_dataset("classes", (0,), np.int32, maxshape=(None,), chunks=(rows,))
        self._probs = None
        if with_class_probs:
            self._probs = self._f.create_dataset("class_probs", (0, num_classes), np.float16,
                                                 maxshape=(None, num_classes), chunks=(rows, num_classes))
        self._ids: List[str] = []
        self._offsets = [0]
        self._wh: List[Sequence[float]] = []
        self._seen = set()

    def add(self, image_id, features, boxes, classes, width, height, class_probs=None):
        image_id = str(image_id)
        features = np.asarray(features)
        boxes = np.asarray(boxes, dtype=np.float32)
        classes = np.asarray(classes).astype(np.int64)
        if image_id in self._seen:
            raise RegionDataError(f"{self.path}: image {image_id!r} appears twice")
        check_image(self.path, image_id, features.astype(np.float32), boxes, classes, float(width), float(height),
                    self.feat_dim, self.num_classes, self.max_regions)
        n = features.shape[0]
        start = self._offsets[-1]
        for ds, value in ((self._feat, features.astype(np.float16)), (self._boxes, boxes), (self._cls, classes)):
            ds.resize(start + n, axis=0)
            ds[start:start + n] = value
        if self._probs is not None:
            if class_probs is None:
                raise RegionDataError(f"{self.path}: image {image_id!r} has no class distribution")
            self._probs.resize(start + n, axis=0)
            self._probs[start:start + n] = np.asarray(class_probs, dtype=np.float16)
        self._ids.append(image_id)
        self._seen.add(image_id)
        self._offsets.append(start + n)
        self._wh.append((float(width), float(height)))

    def close(self):
        if self._f is None:
            return
        h5py = _h5py()
        self._f.create_dataset("image_ids", data=np.array(self._ids, dtype=object), dtype=h5py.string_dtype())
        self._f.create_dataset("offsets", data=np.asarray(self._offsets, dtype=np.int64))
        self._f.create_dataset("image_wh", data=np.asarray(self._wh, dtype=np.float32).reshape(-1, 2))
        self._f.close()
        self._f = None
        os.replace(self.tmp_path, self.path)

    def abort(self):
        if self._f is not None:
            self._f.close()
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


def write_manifest(path, shard_paths, feat_dim, num_classes):
    """Write the manifest listing shards (paths stored relative to the manifest)."""
    h5py = _h5py()
    base = os.path.dirname(os.path.abspath(path))
    shards = []
    for sp in shard_paths:
        with h5py.File(sp, "r") as f:
            shards.append({"path": os.path.relpath(os.path.abspath(sp), base),
                           "num_images": int(f["offsets"].shape[0] - 1),
                           "num_regions": int(f["offsets"][-1])})
    doc = {"format": MANIFEST_FORMAT, "version": VERSION, "feat_dim": int(feat_dim),
           "num_classes": int(num_classes), "shards": shards}
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=1)
    os.replace(tmp, path)


class RegionStore:
    """Read-only view of all shards of a manifest (or of a single ``.h5`` shard).

    Ids, offsets and image sizes are read once into memory; features are read on demand, one
    contiguous slice per image. h5py handles do not survive fork, so shards are opened lazily
    and re-opened when the process id changes (fairseq's data loader workers).
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
            shard_paths, meta = [path], None
        else:
            try:
                with open(path) as fh:
                    meta = json.load(fh)
            except (ValueError, UnicodeDecodeError) as e:
                raise RegionDataError(f"{path}: not a JSON region manifest ({e.__class__.__name__})")
            if not isinstance(meta, dict) or meta.get("format") != MANIFEST_FORMAT or "shards" not in meta:
                raise RegionDataError(f"{path}: not an m3p region manifest (format={meta.get('format') if isinstance(meta, dict) else None!r})")
            base = os.path.dirname(os.path.abspath(path))
            shard_paths = [os.path.join(base, s["path"]) for s in meta["shards"]]
        self.shard_paths = shard_paths
        ids, counts, wh, shard_of, row_of = [], [], [], [], []
        self.region_offsets: List[np.ndarray] = []
        feat_dim = num_classes = None
        self.has_class_probs = True
        h5py = _h5py()
        for si, sp in enumerate(shard_paths):
            try:
                f = h5py.File(sp, "r")
            except (OSError, FileNotFoundError) as e:
                raise RegionDataError(f"{sp}: cannot open region shard ({str(e).splitlines()[0]})")
            with f:
                missing = [k for k in REQUIRED_KEYS if k not in f]
                if missing:
                    raise RegionDataError(f"{sp}: region shard lacks {', '.join(missing)}")
                d = int(f["features"].shape[1]) if f["features"].ndim == 2 else -1
                k = int(f.attrs.get("num_classes", 0))
                if feat_dim is None:
                    feat_dim, num_classes = d, k
                elif d != feat_dim:
                    raise RegionDataError(f"{sp}: features are {d}-d, other shards are {feat_dim}-d")
                if meta is not None and d != int(meta.get("feat_dim", d)):
                    raise RegionDataError(f"{sp}: features are {d}-d, manifest {path} says {meta['feat_dim']}")
                off = f["offsets"][:].astype(np.int64)
                sid = [s.decode() if isinstance(s, bytes) else str(s) for s in f["image_ids"][:]]
                if len(off) != len(sid) + 1 or off[0] != 0 or (np.diff(off) < 0).any() \
                        or off[-1] != f["features"].shape[0]:
                    raise RegionDataError(f"{sp}: offsets do not match image_ids/features (truncated or corrupt shard)")
                zero = np.nonzero(np.diff(off) == 0)[0]
                if len(zero):
                    raise RegionDataError(f"{sp}: image {sid[zero[0]]!r} has zero regions")
                self.has_class_probs &= "class_probs" in f
                ids.extend(sid)
                counts.append(np.diff(off))
                wh.append(f["image_wh"][:].astype(np.float32))
                shard_of.append(np.full(len(sid), si, dtype=np.int32))
                row_of.append(np.arange(len(sid), dtype=np.int64))
                self.region_offsets.append(off)
        self.feat_dim = feat_dim if meta is None else int(meta.get("feat_dim", feat_dim))
        self.num_classes = num_classes if meta is None else int(meta.get("num_classes", num_classes))
        self.image_ids = np.array(ids, dtype=object)
        self.num_regions = np.concatenate(counts) if counts else np.zeros(0, np.int64)
        self.image_wh = np.concatenate(wh) if wh else np.zeros((0, 2), np.float32)
        self._shard = np.concatenate(shard_of) if shard_of else np.zeros(0, np.int32)
        self._row = np.concatenate(row_of) if row_of else np.zeros(0, np.int64)
        order = np.argsort(self.image_ids.astype(str), kind="stable")
        self._sorted_ids = self.image_ids[order].astype(str)
        self._sorted_idx = order
        if len(self._sorted_ids) > 1:
            dup = np.nonzero(self._sorted_ids[1:] == self._sorted_ids[:-1])[0]
            if len(dup):
                raise RegionDataError(f"{path}: image {self._sorted_ids[dup[0]]!r} appears in more than one place")
        self._handles: Dict[int, object] = {}
        self._pid = None

    def __len__(self):
        return len(self.image_ids)

    def index_of(self, image_id, source="") -> int:
        """Row of ``image_id``; a missing id raises an error naming ``source`` (the caption file)."""
        image_id = str(image_id)
        i = np.searchsorted(self._sorted_ids, image_id)
        if i >= len(self._sorted_ids) or self._sorted_ids[i] != image_id:
            where = f"{source}: " if source else ""
            raise RegionDataError(f"{where}image {image_id!r} has no features in {self.path}")
        return int(self._sorted_idx[i])

    def indices_of(self, image_ids: Sequence[str], source="") -> np.ndarray:
        return np.array([self.index_of(x, source) for x in image_ids], dtype=np.int64)

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
        """The stored arrays of one image (features, boxes, classes, class_probs or None), checked."""
        si, row = int(self._shard[index]), int(self._row[index])
        off = self.region_offsets[si]
        a, b = int(off[row]), int(off[row + 1])
        f = self._file(si)
        try:
            feats, boxes, classes = f["features"][a:b], f["boxes"][a:b], f["classes"][a:b]
            probs = f["class_probs"][a:b] if with_class_probs and "class_probs" in f else None
        except OSError as e:
            raise RegionDataError(f"{self.shard_paths[si]}: image {self.image_ids[index]!r} cannot be read "
                                  f"({str(e).splitlines()[0]})")
        if not np.isfinite(feats).all():
            raise RegionDataError(f"{self.shard_paths[si]}: image {self.image_ids[index]!r} has NaN or Inf features")
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
