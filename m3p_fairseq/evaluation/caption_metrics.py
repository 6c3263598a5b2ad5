"""Caption scores: corpus BLEU-4 (sacrebleu) and CIDEr-D (pycocoevalcap's pure-Python scorer).

Nothing is computed by hand here: BLEU is sacrebleu's ``BLEU.corpus_score`` and CIDEr-D is
``pycocoevalcap.cider.Cider`` (the coco-caption CIDEr with clipping and the Gaussian length
penalty, i.e. CIDEr-D; IDF from the references of the scored set). coco-caption tokenizes with
the Stanford PTB tokenizer (Java); here both metrics see sacrebleu's tokenization instead,
lower-cased for CIDEr as coco-caption does: ``13a`` for languages with spaces, ``zh`` for
Chinese and ``char`` for Japanese (no mecab needed).

References come as streams, as sacrebleu takes them: ``refs[k][i]`` is the k-th reference of
hypothesis i.
"""
import re

from sacrebleu.metrics.bleu import BLEU

TOKENIZE = {"zh": "zh", "ja": "char"}
BLEU_STATS = 2 + 2 * 4  # bleu4_stats: two lengths, then matches and counts of 1- to 4-grams
GENERATE_LINE = re.compile(r"^([A-Z])-(\d+)\t(.*)$")


def default_tokenize(lang):
    return TOKENIZE.get(lang, "13a")


def _check(hyps, refs):
    if not refs:
        raise ValueError("no references")
    for k, stream in enumerate(refs):
        if len(stream) != len(hyps):
            raise ValueError(f"reference stream {k + 1} has {len(stream)} lines for {len(hyps)} hypotheses")


def bleu4(hyps, refs, tokenize="13a"):
    """Corpus BLEU-4, 0-100, sacrebleu's defaults otherwise."""
    return bleu4_from_stats(bleu4_stats(hyps, refs, tokenize), tokenize)


def bleu4_stats(hyps, refs, tokenize="13a"):
    """sacrebleu's sufficient statistics of corpus BLEU-4: [hypothesis length, reference length, n-gram matches
    for n = 1..4, n-gram counts for n = 1..4]. Those of disjoint sets add up to those of their union, which is
    how validation sums BLEU over batches and workers (evaluation/validation.py)."""
    _check(hyps, refs)
    s = BLEU(tokenize=tokenize).corpus_score(list(hyps), [list(r) for r in refs])
    return [s.sys_len, s.ref_len, *s.counts, *s.totals]


def bleu4_from_stats(stats, tokenize="13a"):
    """Corpus BLEU-4 (0-100) from bleu4_stats (summed): sacrebleu's smoothing and brevity penalty."""
    b = BLEU(tokenize=tokenize)
    n = b.max_ngram_order
    return b.compute_bleu(list(stats[2:2 + n]), list(stats[2 + n:]), int(stats[0]), int(stats[1]),
                          smooth_method=b.smooth_method, smooth_value=b.smooth_value,
                          effective_order=b.effective_order, max_ngram_order=n).score


def cider_d(hyps, refs, tokenize="13a"):
    """CIDEr-D times 100, the scale of the paper's tables (coco-caption prints 0.594 for 59.4)."""
    from pycocoevalcap.cider.cider import Cider

    _check(hyps, refs)
    tokenizer = BLEU(tokenize=tokenize).tokenizer

    def norm(s):
        return tokenizer(s.strip()).lower()

    res = {i: [norm(h)] for i, h in enumerate(hyps)}
    gts = {i: [norm(r[i]) for r in refs] for i in range(len(hyps))}
    score, _ = Cider().compute_score(gts, res)
    return 100.0 * float(score)


def caption_scores(hyps, refs, lang=None, tokenize=None):
    """{"bleu4": ..., "cider": ...} on the paper's scales (BLEU 0-100, CIDEr x 100)."""
    tokenize = tokenize or default_tokenize(lang)
    return {"bleu4": round(bleu4(hyps, refs, tokenize), 2), "cider": round(cider_d(hyps, refs, tokenize), 2)}


def read_generate_output(lines, kind):
    """Lines of a fairseq-generate log -> the ``kind`` lines ("D" detokenized hypotheses, "T"
    references) ordered by sample id; None when the lines are not a generate log."""
    found = {}
    for line in lines:
        m = GENERATE_LINE.match(line.rstrip("\n"))
        if m and m.group(1) == kind:
            text = m.group(3)
            if kind in "DH":  # hypotheses carry a score column first
                text = text.split("\t", 1)[1] if "\t" in text else ""
            found[int(m.group(2))] = text
    if not found:
        return None
    return [found[i] for i in sorted(found)]
