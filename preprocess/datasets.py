"""Raw public datasets -> sentencepiece -> fairseq-preprocess -> the folder layout the tasks read.

    m3p-import-dataset KIND [sources] --out DATA --spm sentencepiece.bpe.model --dict dict.txt

One DATA folder per corpus (the tasks read ``DATA/captions/{lang}``, so two caption corpora in
one folder would overwrite each other). Each import writes, per language, everything at once:

    DATA/dict.txt, DATA/sentencepiece.bpe.model       copied from --dict / --spm (must match if present)
    DATA/captions/{lang}/{split}.{bin,idx,ids}        cc, multi30k, coco, stair, coco-cn, mild (query)
    DATA/text/{lang}/{split}.{bin,idx}                wiki (xMLM text)
    DATA/xnli/{lang}/{input0,input1,label}/{split}.*  xnli (fairseq's sentence_prediction layout)
    DATA/ntg/{lang}/{src,tgt}/{split}.{bin,idx}       ntg (news body -> title)
    DATA/mild/{lang}/context/{split}.{bin,idx}        mild (the context of each query line)
    DATA/dictionaries/{src}-{tgt}.tsv                 muse (word<TAB>translation, for code-switching)
    DATA/parallel/{src}-{tgt}/{split}.{src}-{tgt}.{src,tgt}.{bin,idx}, dict.{src,tgt}.txt
                                                      moses, tmx, tsv (translation pairs; fairseq's
                                                      translation task reads the folder as it is)

``.ids`` holds the image id of each caption line; ids are what the detector converters
(m3p-import-regions) key images by: COCO's numeric ``cocoid``, Flickr30K's file name without
extension, Conceptual Captions' 0-based line number in its TSV. ``--only-ids`` (a file of ids
or a region manifest) keeps only captions whose image has features, as Conceptual Captions needs
(many of its URLs are dead). Splits are named train / valid / test. Every caption goes through
preprocess/binarize.py's ``binarize()`` (one folder per call, moved into place when complete);
an empty caption or a malformed line stops the run with one line naming the file and the line.
"""
import argparse
import collections
import csv
import functools
import gzip
import io
import itertools
import json
import os
import re
import shutil
import sys
import zipfile
from xml.etree import ElementTree
from xml.parsers import expat

from m3p_fairseq.errors import M3PInputError, command, require_file
from m3p_fairseq.outputs import Staging, check_writable
from preprocess.binarize import binarize, binarize_pair, run_fairseq_preprocess

SPLIT_NAMES = ("train", "valid", "test")
XNLI_LANGS = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
XNLI_LABELS = ("entailment", "neutral", "contradiction")


class DatasetError(M3PInputError):
    """Bad raw data; the message names the file and the line or id."""


def _open(path, newline=None, binary=False):
    """Text file or its .gz (Multi30K ships its raw files gzipped; gzip is told by the bytes, not the name), or
    the one file inside a .zip (IGLUE ships its large training files zipped). ``newline="\\n"`` for line-aligned
    corpora: a stray carriage return inside a sentence must not split its line. A UTF-8 byte-order mark (files
    saved by Windows tools) is dropped, not read as part of the first line. (Bytes that are not UTF-8 end the
    command in one line naming the file and the line: the boundary of m3p_fairseq.errors finds the file being
    read.)"""
    for p in (path, path + ".gz"):
        if os.path.isfile(p):
            if p.endswith(".zip"):
                raw = _zip_member(p)
                return raw if binary else io.TextIOWrapper(raw, encoding="utf-8-sig", newline=newline)
            gz = _is_gzip(p)
            if p.endswith(".gz") and not gz:
                raise DatasetError(f"{p}: not gzip-compressed, although named .gz (a partial download?)")
            if binary:
                return gzip.open(p, "rb") if gz else open(p, "rb")
            if gz:
                return gzip.open(p, "rt", encoding="utf-8-sig", newline=newline)
            return open(p, encoding="utf-8-sig", newline=newline)
    if os.path.isdir(path):
        raise DatasetError(f"{path}: a folder, where a file is expected")
    raise DatasetError(f"{path}: no such file (nor {os.path.basename(path)}.gz)")


def _is_gzip(path):
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _zip_member(path):
    """The one file of a zip archive (folders and macOS's __MACOSX entries aside), opened for reading."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise DatasetError(f"{path}: not a zip archive ({e})")
    files = [i for i in archive.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
    if len(files) != 1:
        raise DatasetError(f"{path}: expected one file in the archive, found {len(files)}")
    return archive.open(files[0])


def _exists(path):
    return os.path.isfile(path) or os.path.isfile(path + ".gz")


def same_vocabulary(a, b):
    """Two dict.txt files with the same lines, or two sentencepiece models with the same pieces and
    scores (a model file also records where it was trained, so equal vocabularies differ in bytes)."""
    with open(a, "rb") as f, open(b, "rb") as g:
        if f.read() == g.read():  # (a copy: no need to load two models)
            return True
    if a.endswith(".model"):
        import sentencepiece as spm

        try:
            x, y = spm.SentencePieceProcessor(model_file=a), spm.SentencePieceProcessor(model_file=b)
        except (OSError, RuntimeError):
            return False
        return x.get_piece_size() == y.get_piece_size() and all(
            x.id_to_piece(i) == y.id_to_piece(i) and x.get_score(i) == y.get_score(i) for i in range(x.get_piece_size()))
    return False


def _clean(text, where):
    text = " ".join(str(text).split())  # one line: tabs and newlines inside a caption become spaces
    if not text:
        raise DatasetError(f"{where}: empty text")
    return text


class Writer:
    """Collects lines per (folder, split), then sentencepiece + fairseq-preprocess into DATA."""

    def __init__(self, out, spm, dict_path, only_ids=None, workers=1):
        self.out, self.spm, self.dict_path, self.workers = out, spm, dict_path, workers
        require_file(spm, "sentencepiece model (--spm)")
        require_file(dict_path, "fairseq dictionary (--dict)")
        check_writable(out, folder=True)
        self.only_ids = load_id_filter(only_ids) if only_ids else None
        self.dropped = 0
        self.labels = collections.defaultdict(list)  # (folder, split) -> class names (xnli)
        self.lines = collections.defaultdict(lambda: collections.defaultdict(list))  # folder -> split -> [(text, id)]
        self.pairs = collections.defaultdict(lambda: collections.defaultdict(list))  # (src, tgt) -> split -> [(s, t)]

    def add(self, folder, split, text, where, image_id=None):
        image_id = None if image_id is None else str(image_id)
        if image_id is not None and self.only_ids is not None and image_id not in self.only_ids:
            self.dropped += 1
            return
        self.lines[folder][split].append((_clean(text, where), image_id))

    def add_pair(self, src, tgt, split, src_text, src_where, tgt_text, tgt_where):
        """A translation pair of DATA/parallel/{src}-{tgt}; an empty side is named by its ``where``."""
        self.pairs[(src, tgt)][split].append((_clean(src_text, src_where), _clean(tgt_text, tgt_where)))

    def close(self):
        """Binarize everything collected into DATA, all folders (and labels) moved into place together."""
        if not self.lines and not self.pairs:
            raise DatasetError("nothing to write: no lines read (or none kept by --only-ids)")
        with Staging() as out:
            install_vocabulary(self.out, self.spm, self.dict_path, out)
            tmp = out.scratch(self.out)
            for folder, splits in sorted(self.lines.items()):
                raw = {}
                for split, items in splits.items():
                    base = os.path.join(tmp, folder.replace("/", "__"), split)
                    os.makedirs(os.path.dirname(base), exist_ok=True)
                    _write_raw(base + ".txt", (t for t, _ in items))
                    if items[0][1] is not None:
                        _write_raw(base + ".ids", (i for _, i in items))
                    raw[split] = base + ".txt"
                binarize(self.spm, self.dict_path, os.path.join(self.out, folder), raw, workers=self.workers,
                         staging=out)
            for (src, tgt), splits in sorted(self.pairs.items()):
                raw = {}
                for split, items in splits.items():
                    base = os.path.join(tmp, f"parallel__{src}-{tgt}", split)
                    os.makedirs(os.path.dirname(base), exist_ok=True)
                    for lang, side in ((src, 0), (tgt, 1)):
                        _write_raw(f"{base}.{lang}", (pair[side] for pair in items))
                    raw[split] = (f"{base}.{src}", f"{base}.{tgt}")
                binarize_pair(self.spm, self.dict_path, os.path.join(self.out, parallel_folder(src, tgt)), src,
                              tgt, raw, workers=self.workers, staging=out)
            if self.labels:
                write_labels(self, out)
        counts = {f: {s: len(v) for s, v in splits.items()} for f, splits in self.lines.items()}
        counts.update({parallel_folder(*pair): {s: len(v) for s, v in splits.items()} for pair, splits in self.pairs.items()})
        return counts


def install_vocabulary(out, spm, dict_path, staging):
    """DATA's dict.txt and sentencepiece model, copied from ``dict_path`` / ``spm`` into ``staging`` (an
    outputs.Staging), or checked to be the same vocabulary where DATA has them already (one DATA folder, one
    vocabulary)."""
    for name, src in (("dict.txt", dict_path), ("sentencepiece.bpe.model", spm)):
        dst = os.path.join(out, name)
        if not os.path.exists(dst):
            shutil.copyfile(src, staging.file(dst))
        elif not same_vocabulary(dst, src):
            raise DatasetError(f"{dst}: differs from {src} (one DATA folder, one vocabulary)")


def _write_raw(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t in texts)


def load_id_filter(path):
    """Image ids to keep: a region manifest/shard (the ids with features) or a text file, one id a line."""
    if path.endswith((".json", ".h5", ".hdf5")):
        from m3p_fairseq.data.region_store import RegionStore

        return set(str(i) for i in RegionStore(path).image_ids)
    with _open(path) as f:
        return {line.strip() for line in f if line.strip()}


# ---- image-caption corpora --------------------------------------------------------------------------

def import_cc(w, train=None, valid=None, id_from="index"):
    """Conceptual Captions: ``caption<TAB>url`` a line, no header (Train_GCC-training.tsv, Validation_GCC-1.1.0-Validation.tsv)."""
    for split, path in (("train", train), ("valid", valid)):
        if not path:
            continue
        with _open(path) as f:
            for n, line in enumerate(f):
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 2:
                    raise DatasetError(f"{path}: line {n + 1}: expected caption<TAB>url, found {len(parts)} fields")
                image_id = n if id_from == "index" else parts[1].strip()
                w.add("captions/en", split, parts[0], f"{path}: line {n + 1}", image_id)


MULTI30K_SPLITS = {"train": ("train", "train"), "valid": ("val", "val"), "test": ("test_2016_flickr", "test_2016")}


def _image_list(path):
    with _open(path) as f:
        return [line.strip() for line in f if line.strip()]


def import_multi30k(w, root, langs=("en", "de", "fr", "cs"), keep_ext=False, task1_only=False):
    """Multi30K (github multi30k/dataset, its data/ folder): task2's 5 captions per image for en/de
    (data/task2/raw/{split}.{1..5}.{lang}.gz, images in task2/image_splits/{split}_images.txt),
    task1's one for fr/cs (data/task1/raw/{split}.{lang}.gz, images in task1/image_splits/{split}.txt)."""
    for lang in langs:
        for split, (t1, t2) in MULTI30K_SPLITS.items():
            t2_files = [os.path.join(root, "task2", "raw", f"{t2}.{k}.{lang}") for k in range(1, 6)]
            if not task1_only and all(_exists(p) for p in t2_files):
                images = _image_list(os.path.join(root, "task2", "image_splits", f"{t2}_images.txt"))
                files = t2_files
            else:
                files = [os.path.join(root, "task1", "raw", f"{t1}.{lang}")]
                if not _exists(files[0]):
                    continue  # e.g. cs has no task2 and some test years
                images = _image_list(os.path.join(root, "task1", "image_splits", f"{t1}.txt"))
            ids = [i if keep_ext else os.path.splitext(i)[0] for i in images]
            for path in files:
                with _open(path) as f:
                    lines = f.read().splitlines()
                if len(lines) != len(ids):
                    raise DatasetError(f"{path}: {len(lines)} captions for {len(ids)} images in its image split list")
                for n, (text, image_id) in enumerate(zip(lines, ids)):
                    w.add(f"captions/{lang}", split, text, f"{path}: line {n + 1}", image_id)


def _karpathy_split(split):
    return {"train": "train", "restval": "train", "val": "valid", "test": "test"}.get(split)


def import_karpathy(w, path, lang="en", test_images=None):
    """Karpathy's dataset_coco.json (also dataset_flickr30k.json): images with split and sentences.
    train + restval -> train, val -> valid, test -> test (``--test-images 1000``: the 1k test)."""
    with _open(path) as f:
        try:
            doc = json.load(f)
        except ValueError as e:
            raise DatasetError(f"{path}: not JSON ({e})")
    if not isinstance(doc, dict) or "images" not in doc:
        raise DatasetError(f"{path}: no 'images' list (not Karpathy's split file)")
    tests = 0
    for n, img in enumerate(doc["images"]):
        split = _karpathy_split(img.get("split"))
        where = f"{path}: images[{n}]"
        if split is None:
            raise DatasetError(f"{where}: split {img.get('split')!r} is not train/restval/val/test")
        if split == "test":
            tests += 1
            if test_images and tests > test_images:
                continue
        image_id = img.get("cocoid", os.path.splitext(img.get("filename", ""))[0])
        if image_id in ("", None):
            raise DatasetError(f"{where}: no cocoid or filename")
        for k, sent in enumerate(img.get("sentences", [])):
            w.add(f"captions/{lang}", split, sent.get("raw", " ".join(sent.get("tokens", []))),
                  f"{where}.sentences[{k}] (image {image_id})", image_id)


def _karpathy_map(path):
    with _open(path) as f:
        doc = json.load(f)
    return {str(img["cocoid"]): _karpathy_split(img["split"]) for img in doc["images"]}


def import_coco_annotations(w, files, lang, karpathy=None):
    """COCO caption annotations (STAIR Captions' stair_captions_v1.2_{train,val}.json): ``annotations``
    with image_id and caption. Without --karpathy the file named --train is train, --valid valid; with
    it every caption goes to its image's Karpathy split (as the English captions)."""
    split_of = _karpathy_map(karpathy) if karpathy else None
    for split, path in files.items():
        if not path:
            continue
        with _open(path) as f:
            try:
                doc = json.load(f)
            except ValueError as e:
                raise DatasetError(f"{path}: not JSON ({e})")
        if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
            raise DatasetError(f"{path}: no 'annotations' list (not a COCO caption file)")
        for n, ann in enumerate(doc["annotations"]):
            where = f"{path}: annotations[{n}]"
            if "image_id" not in ann or "caption" not in ann:
                raise DatasetError(f"{where}: needs image_id and caption")
            image_id = str(ann["image_id"])
            target = split_of.get(image_id) if split_of is not None else split
            if target is None:
                continue  # image outside Karpathy's 123k (none in COCO 2014)
            w.add(f"captions/{lang}", target, ann["caption"], where, image_id)


_COCO_NAME = re.compile(r"^COCO_(?:train|val)2014_0*(\d+)$")


def import_coco_cn(w, root, keep_names=False, caption_files=("imageid.human-written-caption.txt",)):
    """COCO-CN (github li-xirong/coco-cn): coco-cn_{train,val,test}.txt list image names
    (COCO_val2014_000000000139), captions are ``name#k<TAB>caption``; ids become cocoids
    (139) so they match COCO's English captions and features, unless --keep-names."""
    split_of = {}
    for split, name in (("train", "coco-cn_train.txt"), ("valid", "coco-cn_val.txt"), ("test", "coco-cn_test.txt")):
        for image in _image_list(os.path.join(root, name)):
            split_of[image] = split
    for name in caption_files:
        path = os.path.join(root, name)
        with _open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                key, sep, text = line.rstrip("\n").partition("\t")
                if not sep:
                    key, sep, text = line.rstrip("\n").partition(" ")
                image = key.split("#")[0]
                if image not in split_of:
                    raise DatasetError(f"{path}: line {n}: image {image!r} is in no split list")
                m = _COCO_NAME.match(image)
                image_id = image if keep_names or not m else str(int(m.group(1)))
                w.add("captions/zh", split_of[image], text, f"{path}: line {n}", image_id)


def import_mild(w, root, langs):
    """MILD <query, image, context> triples: ``{root}/{lang}/{train,dev,test}.tsv`` with columns
    query<TAB>image_id<TAB>context (our reading of the release; see README). Queries become
    captions/{lang} (image ids in .ids), contexts mild/{lang}/context, line for line."""
    for lang in langs:
        for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
            path = os.path.join(root, lang, f"{name}.tsv")
            if not _exists(path):
                continue
            with _open(path) as f:
                for n, line in enumerate(f, 1):
                    parts = line.rstrip("\n").split("\t")
                    if len(parts) != 3:
                        raise DatasetError(f"{path}: line {n}: expected query<TAB>image_id<TAB>context, "
                                           f"found {len(parts)} fields")
                    query, image_id, context = parts
                    where = f"{path}: line {n}"
                    if w.only_ids is not None and image_id.strip() not in w.only_ids:
                        w.dropped += 1
                        continue
                    w.add(f"captions/{lang}", split, query, where, image_id.strip())
                    w.add(f"mild/{lang}/context", split, context, where)


# ---- text corpora -----------------------------------------------------------------------------------

def import_wiki(w, files, valid_lines=1000):
    """Multilingual Wikipedia text, one file per language named {lang}.txt (one sentence a line); the
    last --valid-lines lines become valid. The line counts are what alpha sampling weighs."""
    for path in files:
        lang = os.path.basename(path).split(".")[0]
        with _open(path) as f:
            lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
        if len(lines) <= valid_lines:
            raise DatasetError(f"{path}: {len(lines)} lines, not more than --valid-lines {valid_lines}")
        for k, (n, line) in enumerate(lines):
            w.add(f"text/{lang}", "train" if k < len(lines) - valid_lines else "valid", line, f"{path}: line {n}")


def import_xnli(w, xnli_dir, train_dir=None, train_langs=("en",), langs=XNLI_LANGS):
    """XNLI-1.0/xnli.{dev,test}.tsv (header; columns language, gold_label, ..., sentence1, sentence2)
    and XNLI-MT-1.0/multinli/multinli.train.{lang}.tsv (header premise, hypo, label; 'contradictory')."""
    def label(value, where):
        value = "contradiction" if value == "contradictory" else value
        if value not in XNLI_LABELS:
            raise DatasetError(f"{where}: label {value!r} is not one of {', '.join(XNLI_LABELS)}")
        return value

    def add(lang, split, premise, hypo, gold, where):
        w.add(f"xnli/{lang}/input0", split, premise, where)
        w.add(f"xnli/{lang}/input1", split, hypo, where)
        w.labels[(f"xnli/{lang}/label", split)].append(label(gold, where))

    for split, name in (("valid", "xnli.dev.tsv"), ("test", "xnli.test.tsv")):
        path = os.path.join(xnli_dir, name)
        with _open(path) as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            for col in ("language", "gold_label", "sentence1", "sentence2"):
                if col not in (reader.fieldnames or []):
                    raise DatasetError(f"{path}: no column {col!r} in the header (not XNLI-1.0's tsv)")
            for n, row in enumerate(reader, 2):
                if row["language"] in langs:
                    add(row["language"], split, row["sentence1"], row["sentence2"], row["gold_label"], f"{path}: line {n}")
    for lang in (train_langs if train_dir else ()):
        path = os.path.join(train_dir, f"multinli.train.{lang}.tsv")
        with _open(path) as f:
            header = f.readline().rstrip("\n").split("\t")
            if header[:3] != ["premise", "hypo", "label"]:
                raise DatasetError(f"{path}: line 1: expected the header premise<TAB>hypo<TAB>label")
            for n, line in enumerate(f, 2):
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 3:
                    raise DatasetError(f"{path}: line {n}: expected 3 fields, found {len(parts)}")
                add(lang, "train", parts[0], parts[1], parts[2], f"{path}: line {n}")


def write_labels(w, out=None):
    """Labels binarized with a fixed dictionary (entailment=4, neutral=5, contradiction=6), as
    fairseq's sentence_prediction reads DATA/label; ``Writer.close`` stages them in ``out`` (an
    outputs.Staging) with the rest of the import."""
    if out is None:
        with Staging() as out:
            return write_labels(w, out)
    by_folder = collections.defaultdict(dict)
    for (folder, split), labels in w.labels.items():
        by_folder[folder][split] = labels
    tmp = out.scratch(w.out)
    label_dict = os.path.join(tmp, "dict.txt")
    _write_raw(label_dict, (f"{lab} 1" for lab in XNLI_LABELS))
    for folder, splits in by_folder.items():
        stage = out.folder(os.path.join(w.out, folder))
        argv = ["--only-source", "--srcdict", label_dict, "--destdir", stage, "--workers", "1"]
        for split, labels in splits.items():
            _write_raw(os.path.join(tmp, f"{split}.label"), labels)
            argv += [f"--{split}pref", os.path.join(tmp, f"{split}.label")]
        run_fairseq_preprocess(argv, folder)
        if os.path.exists(os.path.join(stage, "preprocess.log")):
            os.remove(os.path.join(stage, "preprocess.log"))


def import_ntg(w, root, langs=("en", "de", "es", "fr", "ru")):
    """XGLUE NTG: xglue.ntg.{lang}.src.{train,dev,test} (news bodies) and .tgt.* (titles), line for
    line; train exists for en only in XGLUE."""
    for lang in langs:
        for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
            src = os.path.join(root, f"xglue.ntg.{lang}.src.{name}")
            tgt = os.path.join(root, f"xglue.ntg.{lang}.tgt.{name}")
            if not _exists(src):
                continue
            with _open(src) as f:
                bodies = f.read().splitlines()
            with _open(tgt) as f:
                titles = f.read().splitlines()
            if len(bodies) != len(titles):
                raise DatasetError(f"{tgt}: {len(titles)} titles for {len(bodies)} news bodies in {src}")
            for n, (body, title) in enumerate(zip(bodies, titles), 1):
                w.add(f"ntg/{lang}/src", split, body, f"{src}: line {n}")
                w.add(f"ntg/{lang}/tgt", split, title, f"{tgt}: line {n}")


# ---- parallel text ----------------------------------------------------------------------------------
# Each reader yields (source text, where, target text, where) in the order of the file; ``where``
# names the file and the line (and the TMX unit), so an empty side is reported where it is.

def parallel_folder(src, tgt):
    return f"parallel/{src}-{tgt}"


def parse_pair(value):
    """"en-de" -> ("en", "de"). fairseq names pair files {split}.{src}-{tgt}.{lang}, so a code with a
    '-' or '.' could not be read back (write region variants with '_': pt_BR)."""
    m = re.match(r"^([A-Za-z0-9_]+)-([A-Za-z0-9_]+)$", value)
    if not m or m.group(1) == m.group(2):
        raise DatasetError(f"--pair {value!r}: expected two different language codes, SRC-TGT (e.g. en-de)")
    return m.group(1), m.group(2)


def read_moses(prefix, src, tgt):
    """Moses-style line-aligned files PREFIX.{src} and PREFIX.{tgt} (Europarl's europarl-v7.de-en,
    OPUS's moses downloads, WMT's training sets), plain or .gz; line n of one translates line n of
    the other, so both must have as many lines."""
    paths = (f"{prefix}.{src}", f"{prefix}.{tgt}")
    with _open(paths[0], newline="\n") as f, _open(paths[1], newline="\n") as g:
        for n, (a, b) in enumerate(itertools.zip_longest(f, g), 1):
            if a is None or b is None:
                short, other, rest = (paths[0], paths[1], g) if a is None else (paths[1], paths[0], f)
                raise DatasetError(f"{short}: {n - 1} lines, {other} has {n + sum(1 for _ in rest)} "
                                   f"(line-aligned files need as many)")
            yield a, f"{paths[0]}: line {n}", b, f"{paths[1]}: line {n}"


def read_tsv(path, src, tgt, columns=(1, 2)):
    """One pair a line, source<TAB>target; ``columns`` (1-based) picks the two from more fields
    (WikiMatrix's score<TAB>src<TAB>tgt: 2,3). Every line has as many fields as the first, so a tab
    inside a sentence is caught, not silently cut off."""
    with _open(path, newline="\n") as f:
        width = None
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\r\n").split("\t")
            if width is None:
                width = len(parts)
                if width < max(columns):
                    raise DatasetError(f"{path}: line 1: {width} fields, --columns {columns[0]},{columns[1]} "
                                       f"needs {max(columns)} (source<TAB>target)")
            elif len(parts) != width:
                raise DatasetError(f"{path}: line {n}: {len(parts)} fields, line 1 has {width}")
            where = f"{path}: line {n}"
            yield parts[columns[0] - 1], f"{where} ({src})", parts[columns[1] - 1], f"{where} ({tgt})"


_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def _local(tag):
    return tag.rsplit("}", 1)[-1]


def _primary_language(code):
    """"en-GB", "EN_us", "en" -> "en": OPUS writes both plain and regional codes."""
    return re.split(r"[-_]", code.strip())[0].lower()


def _seg_text(seg):
    """The text of a <seg>. Its inline codes (<bpt>, <ept>, <ph>, <it>, <ut>) hold the formatting of
    the original document, not words; <hi> holds words."""
    parts = [seg.text or ""]
    for child in seg:
        if _local(child.tag) == "hi":
            parts.append(_seg_text(child))
        parts.append(child.tail or "")
    return "".join(parts)


def _tmx_unit(tu, where, src, tgt):
    """(source text, target text) of one <tu>, its <tuv>s matched by primary language subtag."""
    want = {_primary_language(src): src, _primary_language(tgt): tgt}
    found, seen = {}, []
    for tuv in tu:
        if _local(tuv.tag) != "tuv":
            continue  # <note>, <prop>
        code = tuv.get(_XML_LANG) or tuv.get("lang")  # TMX 1.4 xml:lang, TMX 1.1 lang
        if not code:
            raise DatasetError(f"{where}: a <tuv> without xml:lang")
        seen.append(code)
        lang = want.get(_primary_language(code))
        if lang is None:
            continue
        if lang in found:
            raise DatasetError(f"{where}: two <tuv> for {lang} ({found[lang][0]}, {code})")
        seg = next((c for c in tuv if _local(c.tag) == "seg"), None)
        if seg is None:
            raise DatasetError(f"{where}: <tuv xml:lang=\"{code}\"> has no <seg>")
        found[lang] = (code, _seg_text(seg))
    missing = [lang for lang in (src, tgt) if lang not in found]
    if missing:
        raise DatasetError(f"{where}: no <tuv> for {', '.join(missing)} (found {', '.join(seen) or 'none'})")
    return found[src][1], found[tgt][1]


def read_tmx(path, src, tgt):
    """TMX (OPUS's tmx downloads, .tmx or .tmx.gz): <tu> units, each with a <tuv xml:lang="..."><seg>
    per language. Parsed as a stream with the standard library (OPUS files run to gigabytes; expat
    resolves no external entities), each unit dropped once read; fed a line at a time so that an
    error names the line of its unit."""
    parser = ElementTree.XMLPullParser(("start", "end"))
    root, body, unit, unit_line = None, None, 0, 0
    with _open(path, binary=True) as f:
        try:
            for lineno, line in enumerate(f, 1):
                parser.feed(line)
                for event, elem in parser.read_events():
                    tag = _local(elem.tag)
                    if root is None:
                        root = tag
                        if tag != "tmx":
                            raise DatasetError(f"{path}: line {lineno}: root element <{tag}>, not <tmx>")
                    if event == "start":
                        if tag == "body":
                            body = elem
                        elif tag == "tu":
                            unit, unit_line = unit + 1, lineno
                    elif tag == "tu":
                        where = f"{path}: line {unit_line} (tu {unit}"
                        s, t = _tmx_unit(elem, where + ")", src, tgt)
                        yield s, f"{where}, {src})", t, f"{where}, {tgt})"
                        if body is not None:
                            body.remove(elem)
            parser.close()
        except ElementTree.ParseError as e:
            line, column = e.position
            raise DatasetError(f"{path}: line {line}, column {column + 1}: not well-formed XML "
                               f"({expat.ErrorString(e.code)})")
    if unit == 0:
        raise DatasetError(f"{path}: no <tu> translation units")


PARALLEL_READERS = {"moses": read_moses, "tmx": read_tmx, "tsv": read_tsv}


def import_parallel(w, read, sources, src, tgt, valid_lines=0):
    """sources: {split: [prefix or file, ...]} read with ``read`` into DATA/parallel/{src}-{tgt};
    ``valid_lines``: the last N training pairs become valid (OPUS corpora come in one piece)."""
    if valid_lines and ("train" not in sources or "valid" in sources or valid_lines < 0):
        raise DatasetError(f"--valid-lines {valid_lines}: needs a training set, a positive count and no valid set")
    for split, paths in sources.items():
        pairs = [p for path in paths for p in read(path, src, tgt)]
        if split == "train" and valid_lines:
            if len(pairs) <= valid_lines:
                raise DatasetError(f"{', '.join(paths)}: {len(pairs)} pairs, not more than --valid-lines {valid_lines}")
            for k, pair in enumerate(pairs):
                w.add_pair(src, tgt, "train" if k < len(pairs) - valid_lines else "valid", *pair)
        else:
            for pair in pairs:
                w.add_pair(src, tgt, split, *pair)


def import_muse(out, files):
    """MUSE bilingual dictionaries ({src}-{tgt}.txt: 'word translation' a line) -> DATA/dictionaries/{src}-{tgt}.tsv,
    duplicates dropped, order kept (MUSE lists the most frequent source words first). Every file is read
    and checked before any is written: all appear together, or none."""
    check_writable(os.path.join(out, "dictionaries"), folder=True)
    counts = {}
    with Staging() as staging:
        for path in files:
            name = os.path.basename(path).split(".")[0]
            if not re.match(r"^[a-z]{2,3}-[a-z]{2,3}$", name):
                raise DatasetError(f"{path}: expected a MUSE file name like en-de.txt")
            if name in counts:
                raise DatasetError(f"{path}: a second {name} dictionary (one file per language pair)")
            pairs, seen = [], set()
            with _open(path) as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    parts = line.split()
                    if len(parts) != 2:
                        raise DatasetError(f"{path}: line {n}: expected 'word translation', found {len(parts)} fields")
                    if tuple(parts) not in seen:
                        seen.add(tuple(parts))
                        pairs.append(parts)
            if not pairs:
                raise DatasetError(f"{path}: no 'word translation' lines")
            _write_raw(staging.file(os.path.join(out, "dictionaries", name + ".tsv")), (f"{a}\t{b}" for a, b in pairs))
            counts[name] = len(pairs)
    return counts


# ---- command line -------------------------------------------------------------------------------------

def _columns(value):
    m = re.match(r"^\s*([1-9]\d*)\s*,\s*([1-9]\d*)\s*$", value)
    if not m or m.group(1) == m.group(2):
        raise DatasetError(f"--columns {value!r}: expected two different 1-based field numbers, e.g. 1,2")
    return int(m.group(1)), int(m.group(2))


@command("m3p-import-dataset")
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="kind", required=True, metavar="KIND")

    def cmd(name, help, vocab=True, images=True):
        s = sub.add_parser(name, help=help, description=help)
        s.add_argument("--out", required=True, help="the DATA folder of this corpus")
        if vocab:
            s.add_argument("--spm", required=True, help="sentencepiece model (XLM-R's for real runs)")
            s.add_argument("--dict", required=True, help="fairseq dict.txt matching --spm")
            if images:
                s.add_argument("--only-ids", help="keep images listed here (ids file, or a region manifest)")
            s.add_argument("--workers", type=int, default=1)
        return s

    s = cmd("cc", "Conceptual Captions TSV (caption<TAB>url)")
    s.add_argument("--train", help="Train_GCC-training.tsv")
    s.add_argument("--valid", help="Validation_GCC-1.1.0-Validation.tsv")
    s.add_argument("--id-from", choices=("index", "url"), default="index",
                   help="image id: 0-based line number (default) or the URL")
    s = cmd("multi30k", "Multi30K (the data/ folder of github multi30k/dataset)")
    s.add_argument("root", help="multi30k-dataset/data")
    s.add_argument("--langs", default="en,de,fr,cs")
    s.add_argument("--keep-ext", action="store_true", help="keep .jpg in image ids")
    s.add_argument("--task1-only", action="store_true", help="one caption per image for en/de too")
    s = cmd("coco", "MSCOCO (or Flickr30K) with Karpathy's split: dataset_coco.json")
    s.add_argument("json", help="dataset_coco.json")
    s.add_argument("--lang", default="en")
    s.add_argument("--test-images", type=int, default=None, help="first N test images only (1000: the 1k test)")
    s = cmd("stair", "STAIR Captions (ja), COCO annotation JSON")
    s.add_argument("--train", help="stair_captions_v1.2_train.json")
    s.add_argument("--valid", help="stair_captions_v1.2_val.json")
    s.add_argument("--karpathy", help="dataset_coco.json: split by Karpathy's split instead of by file")
    s.add_argument("--lang", default="ja")
    s = cmd("coco-cn", "COCO-CN (zh): coco-cn_{train,val,test}.txt + imageid.*-caption.txt")
    s.add_argument("root", help="the coco-cn folder")
    s.add_argument("--captions", default="imageid.human-written-caption.txt",
                   help="comma-separated caption files (add imageid.manually-translated-caption.txt for more)")
    s.add_argument("--keep-names", action="store_true", help="keep COCO_val2014_... names as image ids")
    s = cmd("mild", "MILD triples: ROOT/{lang}/{train,dev,test}.tsv, query<TAB>image_id<TAB>context")
    s.add_argument("root")
    s.add_argument("--langs", required=True, help="comma-separated languages")
    s = cmd("wiki", "multilingual text, one file per language ({lang}.txt)")
    s.add_argument("files", nargs="+")
    s.add_argument("--valid-lines", type=int, default=1000)
    s = cmd("xnli", "XNLI-1.0 (dev/test) and XNLI-MT-1.0 (train)")
    s.add_argument("xnli_dir", help="XNLI-1.0 folder (xnli.dev.tsv, xnli.test.tsv)")
    s.add_argument("--train-dir", help="XNLI-MT-1.0/multinli (multinli.train.{lang}.tsv)")
    s.add_argument("--train-langs", default="en", help="languages to read training data for (paper: en)")
    s.add_argument("--langs", default=",".join(XNLI_LANGS))
    s = cmd("ntg", "XGLUE NTG: xglue.ntg.{lang}.{src,tgt}.{train,dev,test}")
    s.add_argument("root")
    s.add_argument("--langs", default="en,de,es,fr,ru")
    s = cmd("muse", "MUSE bilingual dictionaries ({src}-{tgt}.txt)", vocab=False)
    s.add_argument("files", nargs="+")
    for kind, help, source in (
            ("moses", "parallel text, Moses-style line-aligned files PREFIX.{src} and PREFIX.{tgt}", "PREFIX"),
            ("tmx", "parallel text, TMX (OPUS's .tmx or .tmx.gz)", "FILE"),
            ("tsv", "parallel text, source<TAB>target a line", "FILE")):
        s = cmd(kind, help + " -> DATA/parallel/{src}-{tgt}", images=False)
        s.add_argument("--pair", required=True, help="SRC-TGT, e.g. en-de: the two languages, source first")
        for split in SPLIT_NAMES:
            s.add_argument(f"--{split}", nargs="+", default=[], metavar=source, help=f"{split} pairs")
        s.add_argument("--valid-lines", type=int, default=0,
                       help="the last N training pairs become valid (for a corpus that comes in one piece)")
        if kind == "tsv":
            s.add_argument("--columns", default="1,2", help="the source and target fields, 1-based (WikiMatrix: 2,3)")

    a = p.parse_args(argv)
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()]  # noqa: E731
    if a.kind == "muse":
        counts = import_muse(a.out, a.files)
        print("; ".join(f"{k}: {v} pairs" for k, v in counts.items()), file=sys.stderr)
        return
    w = Writer(a.out, a.spm, a.dict, getattr(a, "only_ids", None), a.workers)
    if a.kind == "cc":
        import_cc(w, a.train, a.valid, a.id_from)
    elif a.kind == "multi30k":
        import_multi30k(w, a.root, split(a.langs), a.keep_ext, a.task1_only)
    elif a.kind == "coco":
        import_karpathy(w, a.json, a.lang, a.test_images)
    elif a.kind == "stair":
        import_coco_annotations(w, {"train": a.train, "valid": a.valid}, a.lang, a.karpathy)
    elif a.kind == "coco-cn":
        import_coco_cn(w, a.root, a.keep_names, split(a.captions))
    elif a.kind == "mild":
        import_mild(w, a.root, split(a.langs))
    elif a.kind == "wiki":
        import_wiki(w, a.files, a.valid_lines)
    elif a.kind == "xnli":
        import_xnli(w, a.xnli_dir, a.train_dir, split(a.train_langs), split(a.langs))
    elif a.kind == "ntg":
        import_ntg(w, a.root, split(a.langs))
    elif a.kind in PARALLEL_READERS:
        read = PARALLEL_READERS[a.kind]
        if a.kind == "tsv":
            read = functools.partial(read_tsv, columns=_columns(a.columns))
        sources = {s: getattr(a, s) for s in SPLIT_NAMES if getattr(a, s)}
        if not sources:
            raise DatasetError(f"{a.kind}: give --train, --valid or --test")
        import_parallel(w, read, sources, *parse_pair(a.pair), a.valid_lines)
    counts = w.close()
    for folder, splits in sorted(counts.items()):
        print(f"{a.out}/{folder}: " + ", ".join(f"{s} {n}" for s, n in sorted(splits.items())), file=sys.stderr)
    if w.dropped:
        print(f"{w.dropped} lines dropped by --only-ids (no features for their image)", file=sys.stderr)


if __name__ == "__main__":
    main()
