"""Embedded world -> the data folder the tasks read (sentencepiece, fairseq-preprocess, regions).

    m3p-prepare-world WORLD DATA

trains a sentencepiece model on the world's text (real runs use XLM-R's), then binarizes
``text/{lang}`` for xMLM and ``captions/{lang}`` with their image ids, and links the region store.
The downstream sets go through the importers of the real datasets (preprocess/datasets.py), so
they land where real ones do: ``xnli/{lang}/{input0,input1,label}``, ``ntg/{lang}/{src,tgt}``, and
MILD as a corpus folder of its own, ``DATA/mild_corpus`` (its queries are its ``captions/``, its
contexts ``mild/{lang}/context``; one DATA folder per corpus, as the importers want). The
parallel corpus goes through the Moses-style reader of real corpora into ``parallel/en-{xx}``,
the layout of fairseq's translation task. The IGLUE-style sets (raw/iglue, e-bug/iglue's layout) go through
m3p-import-regions' LMDB reader and m3p-import-iglue into one task folder per job, ``iglue/{job}``.
"""
import argparse
import glob
import logging
import os
import sys

from tqdm import tqdm

from m3p_fairseq.data.region_store import RegionStore
from m3p_fairseq.errors import M3PInputError, command
from m3p_fairseq.outputs import check_writable

from .binarize import binarize
from .build_spm import train as train_spm
from .make_world import raw_captions, word_splitter, world_lexicon


def prepare(world, data, vocab_size=2000, progress=True):
    raw = os.path.join(world, "raw")
    text_files = sorted(glob.glob(os.path.join(raw, "text", "*.train.txt")))
    caption_files = sorted(glob.glob(raw_captions(world, "train", "*")))
    if not text_files or not caption_files:
        raise M3PInputError(f"{raw}: no world text or captions (run m3p-make-world first)")
    check_writable(data, folder=True)
    os.makedirs(data, exist_ok=True)
    lex = world_lexicon(world)
    langs = {**{f: os.path.basename(f).split(".")[0] for f in text_files},
             **{f: os.path.basename(f).split(".")[1] for f in caption_files}}
    splitters = {f: word_splitter(lex, lang) for f, lang in langs.items()}
    # bpe: on the world's small closed vocabulary unigram keeps ~100 pieces per language and splits even
    # "pink" and "red" (measured); bpe merges every frequent word into one piece, as XLM-R's tokenizer has them
    train_spm(text_files + caption_files, data, vocab_size=vocab_size, model_type="bpe",
              words={f: s for f, s in splitters.items() if s})
    spm_model, dict_path = os.path.join(data, "sentencepiece.bpe.model"), os.path.join(data, "dict.txt")
    jobs = []
    for f in text_files:
        lang = langs[f]
        splits = {s: os.path.join(raw, "text", f"{lang}.{s}.txt") for s in ("train", "valid")}
        jobs.append((os.path.join(data, "text", lang), splits, False))
    for f in caption_files:
        lang = langs[f]
        splits = {s: raw_captions(world, s, lang) for s in ("train", "valid", "test")}
        jobs.append((os.path.join(data, "captions", lang), {k: v for k, v in splits.items() if os.path.exists(v)}, True))
    logging.getLogger("fairseq_cli.preprocess").setLevel(logging.WARNING)
    for out, splits, ids in tqdm(jobs, desc="binarize", file=sys.stderr, disable=not progress):
        binarize(spm_model, dict_path, out, splits, require_ids=ids)
    regions = os.path.join(data, "regions")
    if not os.path.exists(regions):
        os.symlink(os.path.abspath(os.path.join(world, "regions")), regions)
    dicts = os.path.join(data, "dict")
    if not os.path.exists(dicts) and os.path.isdir(os.path.join(raw, "dict")):
        os.symlink(os.path.abspath(os.path.join(raw, "dict")), dicts)
    prepare_downstream(world, data)
    prepare_parallel(world, data)
    prepare_iglue(world, data)


MILD_CORPUS = "mild_corpus"


def _tsv_languages(path):
    with open(path, encoding="utf-8") as f:
        next(f)  # header
        return sorted({line.split("\t", 1)[0] for line in f if line.strip()})


def prepare_downstream(world, data, xnli_train_langs=("en",)):
    """XNLI and NTG into DATA, MILD into DATA/mild_corpus (with the world's regions linked)."""
    from .datasets import Writer, import_mild, import_ntg, import_xnli

    raw = os.path.join(world, "raw")
    spm_model, dict_path = os.path.join(data, "sentencepiece.bpe.model"), os.path.join(data, "dict.txt")
    xnli, ntg, mild = (os.path.join(raw, k) for k in ("xnli", "ntg", "mild"))
    if os.path.isdir(xnli) or os.path.isdir(ntg):
        w = Writer(data, spm_model, dict_path)
        if os.path.isdir(xnli):
            langs = _tsv_languages(os.path.join(xnli, "XNLI-1.0", "xnli.test.tsv"))
            import_xnli(w, os.path.join(xnli, "XNLI-1.0"), os.path.join(xnli, "XNLI-MT-1.0", "multinli"),
                        train_langs=xnli_train_langs, langs=langs)
        if os.path.isdir(ntg):
            langs = sorted({name.split(".")[2] for name in os.listdir(ntg) if name.startswith("xglue.ntg.")})
            import_ntg(w, ntg, langs)
        w.close()
    if os.path.isdir(mild):
        out = os.path.join(data, MILD_CORPUS)
        w = Writer(out, spm_model, dict_path)
        import_mild(w, mild, sorted(os.listdir(mild)))
        w.close()
        if not os.path.exists(os.path.join(out, "regions")):
            os.symlink(os.path.abspath(os.path.join(world, "regions")), os.path.join(out, "regions"))


IGLUE = "iglue"  # DATA/iglue/{xvnli,xgqa,marvl,xflickrco}: one task folder per IGLUE job


def _langs(folder):
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))) if os.path.isdir(folder) else []


def _shots(folder, pattern):
    """(split, path) of the few-shot files ``pattern`` (``train_*.jsonl``, ``marvl-de_train*.jsonl``) in
    ``folder``: the split is ``train_{shots}``."""
    head, tail = pattern.split("*")
    return [(f"train_{os.path.basename(p)[len(head):-len(tail)].lstrip('_')}", p)
            for p in sorted(glob.glob(os.path.join(folder, pattern)))]


def prepare_iglue(world, data):
    """raw/iglue (e-bug/iglue's ``datasets/`` layout, volta's LMDB features) -> DATA/iglue/{job}, each a task
    folder, imported as a user imports IGLUE's own files (README.downstream.md, IGLUE): the pair images
    through m3p-import-regions' LMDB reader, every annotation file through m3p-import-iglue (called in this
    process: one interpreter for ~200 splits). The other images are the world's region stores, DATA/regions.
    Each task folder links DATA/parallel and DATA/dict, so fine-tuning can keep TCL on (iglue.sh
    KEEP_OBJECTIVES=tcl) and code-switch its English texts (--code-switch)."""
    from .detectors import convert
    from .iglue import import_split

    root = os.path.join(world, "raw", IGLUE)
    if not os.path.isdir(root):
        return
    out = os.path.join(data, IGLUE)
    spm_model, dict_path = os.path.join(data, "sentencepiece.bpe.model"), os.path.join(data, "dict.txt")
    world_store = {s: os.path.join(data, "regions", f"{s}.json") for s in ("train", "valid", "test")}

    def imp(task, path, lang, split, store, **kw):
        import_split(task, [path], lang, split, os.path.join(out, task), spm_model, dict_path, store, **kw)

    def imp_langs(task, folder, name, split, store, skip=()):
        for lang in _langs(folder):
            if lang not in skip and os.path.exists(os.path.join(folder, lang, name)):
                imp(task, os.path.join(folder, lang, name), lang, split, store)

    # XVNLI: SNLI-VE's English train and dev, each language's test, few-shot and translate-test files
    ann, mt = os.path.join(root, "XVNLI", "annotations"), os.path.join(root, "XVNLI", "annotations_machine-translate")
    imp("xvnli", os.path.join(ann, "en", "train.jsonl"), "en", "train", world_store["train"])
    imp("xvnli", os.path.join(ann, "en", "dev.jsonl"), "en", "valid", world_store["valid"])
    imp_langs("xvnli", ann, "test.jsonl", "test", world_store["test"])
    imp_langs("xvnli", mt, "test.jsonl", "test_mt", world_store["test"])
    for lang in _langs(ann):
        for split, path in _shots(os.path.join(ann, lang), "train_*.jsonl"):
            imp("xvnli", path, lang, split, world_store["valid"])
    # xGQA: GQA's LXMERT-style English train and dev, xGQA's question dicts (its English dev is GQA's dev)
    gqa, few = os.path.join(root, "gqa", "annotations"), os.path.join(root, "xGQA", "annotations", "few_shot")
    answers = os.path.join(gqa, "trainval_ans2label.json")

    def gqa_imp(path, lang, split, store):
        import_split("xgqa", [path], lang, split, os.path.join(out, "xgqa"), spm_model, dict_path, store, answers)

    gqa_imp(os.path.join(gqa, "train.json"), "en", "train", world_store["train"])
    gqa_imp(os.path.join(gqa, "valid.json"), "en", "valid", world_store["valid"])
    for lang in _langs(few):
        gqa_imp(os.path.join(few, lang, "test.json"), lang, "test", world_store["test"])
        if lang != "en":
            gqa_imp(os.path.join(few, lang, "dev.json"), lang, "valid", world_store["valid"])
        for split, path in _shots(os.path.join(few, lang), "train_*.json"):
            gqa_imp(path, lang, split, world_store["valid"])
    few_mt = os.path.join(root, "xGQA", "annotations_machine-translate", "few_shot")
    for lang in _langs(few_mt):
        gqa_imp(os.path.join(few_mt, lang, "test_gmt.json"), lang, "test_mt", world_store["test"])
    # NLVR2 -> MaRVL: the pair images' LMDBs into region stores (a MaRVL language's test and few-shot images in
    # one), then the statements
    stores = os.path.join(out, "marvl", "features")
    num_classes = RegionStore(world_store["train"]).num_classes

    def lmdb_store(name, *lmdbs):
        manifest = os.path.join(stores, f"{name}.json")
        convert("lmdb", [p for p in lmdbs if os.path.exists(p)], manifest, num_classes=num_classes, progress=False)
        return manifest

    nlvr2 = lmdb_store("nlvr2", os.path.join(root, "nlvr2", "features", "nlvr2_X101.lmdb"))
    for name, split in (("train", "train"), ("dev", "valid"), ("test", "test")):
        imp("marvl", os.path.join(root, "nlvr2", "annotations", f"{name}.jsonl"), "en", split, nlvr2)
    marvl = os.path.join(root, "marvl")
    zero = os.path.join(marvl, "zero_shot")
    for path in sorted(glob.glob(os.path.join(zero, "annotations", "marvl-*.jsonl"))):
        lang = os.path.basename(path)[len("marvl-"):-len(".jsonl")]
        store = lmdb_store(f"marvl-{lang}", os.path.join(marvl, "features", f"marvl-{lang}_X101.lmdb"),
                           os.path.join(marvl, "few_shot", "features", f"marvl-{lang}_X101.lmdb"))
        imp("marvl", path, lang, "test", store)
        translated = os.path.join(zero, "annotations_machine-translate", f"marvl-{lang}_gmt.jsonl")
        if os.path.exists(translated):
            imp("marvl", translated, lang, "test_mt", store)
        for split, shot in _shots(os.path.join(marvl, "few_shot", "annotations"), f"marvl-{lang}_train*.jsonl"):
            imp("marvl", shot, lang, split, store)
    # Flickr30K -> xFlickr&CO: English train and dev, one caption per test image and language
    flickr, x = os.path.join(root, "flickr30k", "annotations"), os.path.join(root, "xFlickrCO")
    imp("xflickrco", os.path.join(flickr, "train_ann.jsonl"), "en", "train", world_store["train"])
    imp("xflickrco", os.path.join(flickr, "valid_ann.jsonl"), "en", "valid", world_store["valid"])
    imp_langs("xflickrco", os.path.join(x, "annotations"), "test.jsonl", "test", world_store["test"])
    imp_langs("xflickrco", os.path.join(x, "annotations_machine-translate"), "test_gmt.jsonl", "test_mt",
              world_store["test"])
    for lang in _langs(os.path.join(x, "annotations")):
        for split, path in _shots(os.path.join(x, "annotations", lang), "train_*.jsonl"):
            imp("xflickrco", path, lang, split, world_store["valid"])
    for shared in ("parallel", "dict"):  # (the translation pairs of TCL, the dictionaries of --code-switch)
        if os.path.isdir(os.path.join(data, shared)):
            for job in _langs(out):
                link = os.path.join(out, job, shared)
                if not os.path.lexists(link):
                    os.symlink(os.path.join("..", "..", shared), link)


def prepare_parallel(world, data):
    """raw/parallel/en-{xx}/{train,valid}.{en,xx} (Moses-style) -> DATA/parallel/en-{xx}."""
    from .datasets import Writer, import_parallel, parse_pair, read_moses

    root = os.path.join(world, "raw", "parallel")
    if not os.path.isdir(root):
        return
    w = Writer(data, os.path.join(data, "sentencepiece.bpe.model"), os.path.join(data, "dict.txt"))
    for name in sorted(os.listdir(root)):
        src, tgt = parse_pair(name)
        sources = {s: [os.path.join(root, name, s)] for s in ("train", "valid")
                   if os.path.exists(os.path.join(root, name, f"{s}.{src}"))}
        import_parallel(w, read_moses, sources, src, tgt)
    w.close()


@command("m3p-prepare-world")
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("world", help="folder written by m3p-make-world")
    p.add_argument("data", help="output data folder")
    p.add_argument("--vocab-size", type=int, default=2000)
    a = p.parse_args(argv)
    prepare(a.world, a.data, a.vocab_size)
    print(f"data ready in {a.data}", file=sys.stderr)


if __name__ == "__main__":
    main()
