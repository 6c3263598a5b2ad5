"""Embedded world -> the data folder the tasks read (sentencepiece, fairseq-preprocess, regions).

    m3p-prepare-world WORLD DATA

trains a sentencepiece model on the world's text (real runs use XLM-R's), then binarizes
``text/{lang}`` for xMLM and ``captions/{lang}`` with their image ids, and links the region store.
The downstream sets go through the importers of the real datasets (preprocess/datasets.py), so
they land where real ones do: ``xnli/{lang}/{input0,input1,label}``, ``ntg/{lang}/{src,tgt}``, and
MILD as a corpus folder of its own, ``DATA/mild_corpus`` (its queries are its ``captions/``, its
contexts ``mild/{lang}/context``; one DATA folder per corpus, as the importers want). The
parallel corpus goes through the Moses-style reader of real corpora into ``parallel/en-{xx}``,
the layout of fairseq's translation task.
"""
import argparse
import glob
import logging
import os
import sys

from tqdm import tqdm

from m3p_fairseq.errors import M3PInputError, command
from m3p_fairseq.outputs import check_writable

from .binarize import binarize
from .build_spm import train as train_spm
from .make_world import raw_captions


def prepare(world, data, vocab_size=2000, progress=True):
    raw = os.path.join(world, "raw")
    text_files = sorted(glob.glob(os.path.join(raw, "text", "*.train.txt")))
    caption_files = sorted(glob.glob(raw_captions(world, "train", "*")))
    if not text_files or not caption_files:
        raise M3PInputError(f"{raw}: no world text or captions (run m3p-make-world first)")
    check_writable(data, folder=True)
    os.makedirs(data, exist_ok=True)
    train_spm(text_files + caption_files, data, vocab_size=vocab_size)
    spm_model, dict_path = os.path.join(data, "sentencepiece.bpe.model"), os.path.join(data, "dict.txt")
    jobs = []
    for f in text_files:
        lang = os.path.basename(f).split(".")[0]
        splits = {s: os.path.join(raw, "text", f"{lang}.{s}.txt") for s in ("train", "valid")}
        jobs.append((os.path.join(data, "text", lang), splits, False))
    for f in caption_files:
        lang = os.path.basename(f).split(".")[1]
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
