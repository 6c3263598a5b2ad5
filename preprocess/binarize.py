"""Encode raw text with sentencepiece and binarize it with ``fairseq-preprocess``.

One call makes one folder (a language of the text corpus, or the captions of one language):

    m3p-binarize --spm sentencepiece.bpe.model --dict dict.txt --out DATA/captions/en \\
        --train raw/captions/train.en.txt --valid raw/captions/valid.en.txt

writes ``DATA/captions/en/{train,valid}.{bin,idx}`` (``--only-source --dataset-impl mmap``, the
fairseq dictionary given) and, for captions, copies the sibling ``.ids`` file (the image id of
each line) to ``{split}.ids`` after checking that it has as many lines as the captions. Empty
lines, bytes that are not UTF-8 and a line-count mismatch stop the run with the file and line
named; nothing is written into ``--out`` unless every split succeeds, and a refused run leaves no
folder behind (``m3p_fairseq.outputs``). ``binarize_pair`` does the same for a language pair
(line-aligned source and target files), in the layout of fairseq's translation task.
"""
import argparse
import contextlib
import logging
import os
import shutil
import sys

from m3p_fairseq.errors import M3PInputError, command, require_file
from m3p_fairseq.outputs import Staging


class BinarizeError(M3PInputError):
    """Bad text to binarize; the message names the file and the line."""


def _encode(sp, src, dst, max_tokens=None, progress=False):
    from tqdm import tqdm

    require_file(src, "raw text file")
    n = 0
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        lines = tqdm(f, desc=f"sentencepiece {os.path.basename(src)}", unit=" lines", mininterval=2,
                     disable=not progress, leave=False)
        for n, line in enumerate(lines, 1):
            text = line.rstrip("\n")
            if not text.strip():
                raise BinarizeError(f"{src}: line {n} is empty")
            pieces = sp.encode(text, out_type=str)
            if max_tokens and len(pieces) > max_tokens:
                raise BinarizeError(f"{src}: line {n} has {len(pieces)} pieces, more than --max-tokens {max_tokens}")
            out.write(" ".join(pieces) + "\n")
    if n == 0:
        raise BinarizeError(f"{src}: no lines")
    return n


def _count_lines(path):
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def run_fairseq_preprocess(argv, what):
    """fairseq-preprocess in this process (its command line, without a new interpreter per folder)."""
    root = logging.getLogger()
    level = root.level  # before fairseq_cli.preprocess's import, which sets the root logger's level
    from fairseq import options
    from fairseq_cli import preprocess

    args = options.get_preprocessing_parser().parse_args(argv)
    try:
        preprocess.main(args)
    except Exception as e:  # fairseq raises bare exceptions; keep one line naming the folder
        raise BinarizeError(f"fairseq-preprocess failed for {what}: {e.__class__.__name__}: {e}")
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def _staged(out_dir, staging=None):
    """A temporary folder that becomes ``out_dir`` (replacing it) when the block and ``staging`` (an
    ``outputs.Staging`` of several outputs; default: one of its own) succeed, and its scratch folder for
    sentencepiece output: a failed run leaves no half-written folder and no folder it created."""
    with contextlib.ExitStack() as stack:
        if staging is None:
            staging = stack.enter_context(Staging())
        stage = staging.folder(out_dir)
        yield stage, staging.scratch(os.path.dirname(stage))
        if os.path.exists(os.path.join(stage, "preprocess.log")):
            os.remove(os.path.join(stage, "preprocess.log"))


def _progress(progress):
    return sys.stderr.isatty() if progress is None else progress


def binarize(spm_model, dict_path, out_dir, splits, workers=1, max_tokens=None, require_ids=False, progress=None,
             staging=None):
    """splits: {"train": raw_path, "valid": raw_path, "test": raw_path} (any subset). ``progress``: a
    tqdm bar per file while encoding (default: when stderr is a terminal). ``staging``: the
    ``outputs.Staging`` of a command writing several folders together (default: ``out_dir`` alone)."""
    sp = _sentencepiece(spm_model, dict_path)
    with _staged(out_dir, staging) as (stage, enc):
        args = []
        for split, raw in splits.items():
            n = _encode(sp, raw, os.path.join(enc, split), max_tokens, _progress(progress))
            ids = os.path.splitext(raw)[0] + ".ids"
            if os.path.exists(ids):
                m = _count_lines(ids)
                if m != n:
                    raise BinarizeError(f"{ids}: {m} image ids for {n} captions in {raw}")
                with open(ids, encoding="utf-8") as f:
                    for k, line in enumerate(f, 1):
                        if not line.strip():
                            raise BinarizeError(f"{ids}: line {k} has no image id")
                shutil.copyfile(ids, os.path.join(stage, f"{split}.ids"))
            elif require_ids:
                raise BinarizeError(f"{ids}: missing (captions need the image id of each line)")
            args += [f"--{split}pref", os.path.join(enc, split)]
        run_fairseq_preprocess(["--only-source", "--srcdict", dict_path, "--destdir", stage,
                                "--dataset-impl", "mmap", "--workers", str(workers)] + args, out_dir)


def binarize_pair(spm_model, dict_path, out_dir, src, tgt, splits, workers=1, max_tokens=None, progress=None,
                  staging=None):
    """A language pair as fairseq's translation task reads it. splits: {split: (src_path, tgt_path)},
    line-aligned raw files; writes ``out_dir/{split}.{src}-{tgt}.{src,tgt}.{bin,idx}`` and
    ``dict.{src,tgt}.txt`` (both the one dictionary given: one vocabulary for all languages)."""
    if src == tgt:
        raise BinarizeError(f"{out_dir}: source and target are both {src!r}")
    sp = _sentencepiece(spm_model, dict_path)
    with _staged(out_dir, staging) as (stage, enc):
        args = []
        for split, (src_raw, tgt_raw) in splits.items():
            prefix = os.path.join(enc, split)
            n = _encode(sp, src_raw, f"{prefix}.{src}", max_tokens, _progress(progress))
            m = _encode(sp, tgt_raw, f"{prefix}.{tgt}", max_tokens, _progress(progress))
            if m != n:
                raise BinarizeError(f"{tgt_raw}: {m} lines for the {n} lines of {src_raw} (line-aligned files)")
            args += [f"--{split}pref", prefix]
        run_fairseq_preprocess(["--source-lang", src, "--target-lang", tgt, "--srcdict", dict_path,
                                "--tgtdict", dict_path, "--destdir", stage, "--dataset-impl", "mmap",
                                "--workers", str(workers)] + args, out_dir)


def _sentencepiece(spm_model, dict_path):
    """The sentencepiece model, after checking that both vocabulary files are there and readable."""
    import sentencepiece as spm

    require_file(spm_model, "sentencepiece model")
    require_file(dict_path, "fairseq dictionary")
    try:
        sp = spm.SentencePieceProcessor(model_file=spm_model)
    except (OSError, RuntimeError) as e:
        raise BinarizeError(f"{spm_model}: not a sentencepiece model ({(str(e).splitlines() or [''])[0][:200]})")
    try:
        from fairseq.data import Dictionary

        Dictionary.load(dict_path)
    except (ValueError, RuntimeError, IndexError) as e:
        raise BinarizeError(f"{dict_path}: not a fairseq dict.txt ({(str(e).splitlines() or [''])[0][:200]})")
    return sp


@command("m3p-binarize")
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spm", required=True, help="sentencepiece model")
    p.add_argument("--dict", required=True, help="fairseq dict.txt matching the model")
    p.add_argument("--out", required=True, help="output folder")
    for split in ("train", "valid", "test"):
        p.add_argument(f"--{split}", help=f"raw {split} file, one sentence a line")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=None, help="reject lines longer than this many pieces")
    p.add_argument("--require-ids", action="store_true", help="captions: every file needs its .ids file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    splits = {s: getattr(a, s) for s in ("train", "valid", "test") if getattr(a, s)}
    if not splits:
        p.error("give at least one of --train/--valid/--test")
    binarize(a.spm, a.dict, a.out, splits, a.workers, a.max_tokens, a.require_ids, progress=False if a.quiet else None)


if __name__ == "__main__":
    main()
