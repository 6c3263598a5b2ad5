"""m3p-caption-score: BLEU-4 and CIDEr-D of generated captions against one or more references.

    m3p-caption-score --hyp hyps.txt --ref refs1.txt [refs2.txt ...] --lang de
    m3p-caption-score --hyp gen.out --ref gen.out --lang de --results demo-output/results.json --key captioning.de
    m3p-caption-score --hyp gen.out --ref gen.out --lang de --lang-id DATA   # + right_language

A file is either one caption per line (line i of every file belongs to image i) or a
fairseq-generate log: from a log, hypotheses are its D- lines and references its T- lines, in
sample-id order. Prints the scores as JSON; with ``--results`` merges them under ``--key``. With
``--lang-id DATA``, also the share of hypotheses written in ``--lang`` (``right_language``, percent), by the
language identifier learned from DATA's text corpus (evaluation/language_id.py).
"""
import argparse
import json
import sys

from .caption_metrics import caption_scores, default_tokenize, read_generate_output
from ..errors import M3PInputError, command, require_file
from .results import check_results_file, update_results


def read_captions(path, kind, what):
    """Lines of ``path`` (or its ``kind`` lines when it is a fairseq-generate log)."""
    require_file(path, f"{what} file")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or not any(line.strip() for line in lines):
        raise M3PInputError(f"{path}: empty {what} file")
    from_log = read_generate_output(lines, kind)
    if from_log is not None:
        return from_log
    if any(read_generate_output([line], k) for line in lines[:50] for k in "STHDP"):
        raise M3PInputError(f"{path}: a fairseq-generate log without {kind}- lines")
    return lines


@command("m3p-caption-score")
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hyp", required=True, help="generated captions (or a fairseq-generate log)")
    p.add_argument("--ref", required=True, nargs="+", help="reference files, line-aligned with --hyp")
    p.add_argument("--lang", default=None, help="caption language; picks the tokenizer (zh: zh, ja: char, else 13a)")
    p.add_argument("--tokenize", default=None, help="sacrebleu tokenizer, overriding the language's")
    p.add_argument("--lang-id", metavar="DATA", default=None,
                   help="data folder (dict.txt, sentencepiece.bpe.model, text/{lang}/train): also report the share of "
                        "hypotheses written in --lang (right_language)")
    p.add_argument("--results", default=None, help="results JSON to update")
    p.add_argument("--key", default=None, help="dotted key in --results (e.g. captioning.de)")
    a = p.parse_args(argv)
    if a.results and not a.key:
        p.error("--results needs --key")
    if a.lang_id and not a.lang:
        p.error("--lang-id needs --lang (the language the hypotheses should be in)")
    check_results_file(a.results, a.key)
    hyps = read_captions(a.hyp, "D", "hypothesis")
    refs = [read_captions(r, "T", "reference") for r in a.ref]
    for path, stream in zip(a.ref, refs):
        if len(stream) != len(hyps):
            raise M3PInputError(f"{path}: {len(stream)} references for {len(hyps)} hypotheses in {a.hyp}")
        empty = [i for i, r in enumerate(stream) if not r.strip()]
        if empty:
            raise M3PInputError(f"{path}: line {empty[0] + 1} is an empty reference")
    tokenize = a.tokenize or default_tokenize(a.lang)
    scores = caption_scores(hyps, refs, tokenize=tokenize)
    if a.lang_id:
        from .language_id import for_texts

        lid, encode = for_texts(a.lang_id)
        scores["right_language"] = lid.share([encode(h) for h in hyps], a.lang)
    print(json.dumps(scores))
    if a.results:
        update_results(a.results, a.key, scores)
        print(f"{a.key} -> {a.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
