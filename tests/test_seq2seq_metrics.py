"""BLEU-4 and CIDEr-D wrappers on cases worked out by hand; the m3p-caption-score command."""
import json
import sys

import pytest

from m3p_fairseq.evaluation.caption_metrics import bleu4, caption_scores, cider_d, read_generate_output
from m3p_fairseq.evaluation.caption_score_cli import main as score_main

from .conftest import run

SCORE = [sys.executable, "-m", "m3p_fairseq.evaluation.caption_score_cli"]


def test_bleu4_by_hand():
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat": clipped n-gram precisions
    # 5/6, 3/5, 2/4, 1/3; equal lengths (BP = 1) -> (5/6 * 3/5 * 1/2 * 1/3) ** (1/4)
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu4(["the cat sat on the mat"], [["the cat sat on a mat"]]) == pytest.approx(expected, abs=1e-6)
    # a second reference that matches exactly makes it perfect
    assert bleu4(["the cat sat on the mat"], [["the cat sat on a mat"], ["the cat sat on the mat"]]) == pytest.approx(100.0)


def test_cider_d_by_hand():
    """Two images, refs "a b" and "c d"; hyps "a b" and "c e". IDF = log(2) - log(df) with df = 1
    for every reference n-gram (and df = max(1, 0) = 1 for the unseen "e"), so every weight is log 2.
    Image 1: unigram and bigram cosines 1, no 3-/4-grams -> mean (1 + 1 + 0 + 0) / 4 = 0.5.
    Image 2: unigrams {c, e} vs {c, d} -> 1/2 (clipping keeps c only), bigrams 0 -> 0.125.
    Same lengths, no penalty; times 10 (coco-caption) -> (5 + 1.25) / 2 = 3.125; reported x 100."""
    assert cider_d(["a b", "c e"], [["a b", "c d"]]) == pytest.approx(312.5)
    # a perfect corpus scores 10 (x 100), a repeated word costs (counts and the length penalty)
    assert cider_d(["a b", "c d"], [["a b", "c d"]]) == pytest.approx(500.0)  # 3-/4-grams absent: (1+1+0+0)/4*10
    assert cider_d(["a b b", "c d"], [["a b", "c d"]]) < 500.0


def test_tokenizers_per_language():
    # Chinese without spaces: sacrebleu's zh tokenizer splits characters, so a near miss still scores
    s = caption_scores(["俌仭仗俓乥乺", "丆丽佋乥乺"], [["俌仭仗俓乥仾", "丆丽佋乥乺"]], lang="zh")
    assert 0 < s["bleu4"] < 100 and s["cider"] > 0
    s13a = caption_scores(["俌仭仗俓乥乺", "丆丽佋乥乺"], [["俌仭仗俓乥仾", "丆丽佋乥乺"]], tokenize="13a")
    assert s13a["bleu4"] < s["bleu4"]


def test_reads_fairseq_generate_logs():
    log = ["S-1\t", "T-1\ta red dog", "H-1\t-0.5\t▁a ▁red ▁dog", "D-1\t-0.5\ta red dog", "P-1\t-0.1 -0.2",
           "S-0\t", "T-0\ta blue cat", "H-0\t-0.7\t", "D-0\t-0.7\t", "Generate test with beam=10: BLEU4 = 1"]
    assert read_generate_output(log, "D") == ["", "a red dog"]
    assert read_generate_output(log, "T") == ["a blue cat", "a red dog"]
    assert read_generate_output(["a red dog"], "D") is None


def test_score_command_writes_results(tmp_path):
    hyp, ref, res = tmp_path / "h.txt", tmp_path / "r.txt", tmp_path / "results.json"
    hyp.write_text("a red dog left of a cat\na blue car\n")
    ref.write_text("a red dog left of a cat\na blue bus\n")
    out = run(SCORE + ["--hyp", str(hyp), "--ref", str(ref), "--lang", "en", "--results", str(res),
                       "--key", "captioning.en"])
    scores = json.loads(out.stdout)
    doc = json.load(open(res))
    assert doc["captioning"]["en"] == scores
    assert scores == caption_scores(["a red dog left of a cat", "a blue car"], [["a red dog left of a cat", "a blue bus"]])


def _one_line_error(res, *needles):
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    for n in needles:
        assert n in last, res.stderr
    assert "Traceback" not in res.stderr


def test_score_command_bad_input(tmp_path):
    hyp, empty, short = tmp_path / "h.txt", tmp_path / "empty.txt", tmp_path / "short.txt"
    hyp.write_text("a\nb\n")
    empty.write_text("")
    short.write_text("a\n")
    # the real command: one line, non-zero exit
    _one_line_error(run(SCORE + ["--hyp", str(hyp), "--ref", str(empty)], check=False), "empty.txt", "empty reference file")
    # the same exits, in process
    for args, needles in ((["--hyp", str(hyp), "--ref", str(short)], ("short.txt", "1 references for 2 hypotheses")),
                          (["--hyp", str(tmp_path / "none.txt"), "--ref", str(short)], ("none.txt", "not found"))):
        with pytest.raises(SystemExit) as e:
            score_main(args)
        assert all(n in str(e.value) for n in needles) and "\n" not in str(e.value)
