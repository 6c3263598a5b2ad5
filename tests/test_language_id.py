"""The output-language metric (right_language) and the transfer ratios: the identifier learned from the data
folder's text corpus tells the world's languages apart on text it never saw, through the command users run."""
import json
import os

import pytest

from m3p_fairseq.evaluation.caption_score_cli import main as caption_score
from m3p_fairseq.evaluation.language_id import LanguageIdentifier, for_texts
from m3p_fairseq.evaluation.transfer import PAPER, transfer_ratios


@pytest.fixture(scope="module")
def identifier(tiny_world):
    return for_texts(tiny_world["data"])


def _raw(world, *parts):
    with open(os.path.join(world, "raw", *parts), encoding="utf-8") as f:
        return f.read().splitlines()


def test_held_out_text_of_every_language_is_identified(tiny_world, identifier):
    lid, encode = identifier
    assert len(lid.langs) == 10
    for lang in lid.langs:  # the valid split: sentences the identifier was not trained on
        lines = _raw(tiny_world["world"], "text", f"{lang}.valid.txt")
        assert lid.share([encode(t) for t in lines], lang) >= 95.0, lang


def test_specials_and_shared_pieces_do_not_decide():
    lid = LanguageIdentifier.from_counts({"en": [0, 0, 0, 0, 5, 5, 0], "de": [0, 0, 0, 0, 5, 0, 5]},
                                        special_ids={0, 1, 2, 3})
    assert lid.identify([0, 2]) is None  # nothing but <s> </s>
    assert lid.identify([4, 4, 5]) == "en" and lid.identify([4, 6, 2]) == "de"
    assert lid.share([[5], [6], [0]], "en") == pytest.approx(100 / 3, abs=0.01)


def test_caption_score_reports_the_share_in_the_requested_language(tiny_world, tmp_path, capsys):
    world = tiny_world["world"]
    de = tmp_path / "de.txt"
    de.write_text("\n".join(_raw(world, "captions", "test.de.txt")) + "\n", encoding="utf-8")
    results = tmp_path / "r.json"
    for lang in ("de", "en"):  # German captions: all in German, none in English
        caption_score(["--hyp", str(de), "--ref", str(de), "--lang", lang, "--lang-id", tiny_world["data"],
                       "--results", str(results), "--key", f"captioning.{lang}"])
    doc = json.load(open(results))["captioning"]
    assert doc["de"]["right_language"] == 100.0 and doc["en"]["right_language"] == 0.0


def test_transfer_ratios_by_hand():
    doc = {"retrieval": {"chance_mR": 5.0, "finetune_en": {"en": {"mR": 85.0}, "de": {"mR": 45.0},
                                                           "fr": {"mR": 25.0}}},
           "xnli": {"en": {"acc": 80.0}, "de": {"acc": 70.0}, "ru": {"acc": 100 / 3}},
           "ntg": {"en": {"bleu4": 40.0}, "de": {"bleu4": 20.0}, "fr": {"bleu4": 10.0}}}
    t = transfer_ratios(doc)
    assert t["retrieval"]["ratio"] == pytest.approx((40 / 80 + 20 / 80) / 2, abs=1e-3)
    assert t["xnli"]["per_lang"] == {"de": pytest.approx((70 - 100 / 3) / (80 - 100 / 3), abs=1e-3), "ru": 0.0}
    assert t["ntg"]["ratio"] == pytest.approx(0.375, abs=1e-3) and t["ntg"]["min"] == pytest.approx(0.25, abs=1e-3)
    assert t["xnli"]["paper"] == PAPER["xnli"] == 0.78
