"""The real commands: fairseq-train (xDAE, IC, DIC) -> fairseq-generate (captions) -> m3p-caption-score; bad input."""
import contextlib
import io
import json
import os
import shutil
import sys

import pytest
import torch

from .conftest import BIN, run

SCORE = [sys.executable, "-m", "m3p_fairseq.evaluation.caption_score_cli"]


def _series(stderr, key):
    vals = []
    for line in stderr.splitlines():
        if "train_inner" in line and "{" in line:
            rec = json.loads(line[line.index("{"):])
            if rec.get(key) is not None:
                vals.append(float(rec[key]))
    return vals


def _generate(data, ckpt, *extra, check=True):
    return run([os.path.join(BIN, "fairseq-generate"), data, "--user-dir", "m3p_fairseq", "--task", "m3p_captioning",
                "--path", ckpt, "--gen-subset", "test", "--batch-size", "8", "--post-process", "sentencepiece", "--cpu",
                *extra], check=check)


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("gen_ckpt"))
    res = run([os.path.join(BIN, "fairseq-train"), tiny_world["data"], "--user-dir", "m3p_fairseq",
               "--task", "multitask_multimodal", "--arch", "m3p_seq2seq_tiny", "--criterion", "m3p_generation",
               "--objectives", "xdae,ic,dic", "--objective-ratios", "1,1,1", "--caption-langs", "en,de",
               "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "1e-3", "--clip-norm", "1.0",
               "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10", "--max-update", "60", "--batch-size", "16",
               "--cpu", "--num-workers", "0", "--seed", "1", "--save-dir", save, "--no-epoch-checkpoints",
               "--disable-validation", "--log-format", "json", "--log-interval", "5",
               # no prefetch thread: an h5py read in it can deadlock the interpreter's exit
               "--data-buffer-size", "0"],
              cwd=str(tmp_path_factory.mktemp("cwd")))  # --user-dir must resolve from anywhere
    return os.path.join(save, "checkpoint_last.pt"), res


def test_every_generation_objective_trains(trained):
    ckpt, res = trained
    for key in ("xdae_loss", "ic_loss", "dic_loss"):
        s = _series(res.stdout + res.stderr, key)
        assert len(s) >= 4, (key, s)
        assert s[-1] < s[0], f"{key} did not fall: {s}"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    # the checkpoint keeps the language list, so ids mean the same at generation time
    assert state["cfg"]["model"].langs == "ar,cs,de,en,es,fr,it,ja,ru,zh"


def test_generate_then_score(trained, tiny_world, tmp_path):
    ckpt, _ = trained
    res = _generate(tiny_world["data"], ckpt, "--target-lang", "de", "--beam", "5")
    log = str(tmp_path / "gen.de.txt")
    open(log, "w").write(res.stdout)
    hyps = [line for line in res.stdout.splitlines() if line.startswith("D-")]
    refs = {int(line.split("\t")[0][2:]): line.split("\t")[1] for line in res.stdout.splitlines() if line.startswith("T-")}
    assert len(hyps) == 24 and len(refs) == 24  # each test image once
    raw = open(os.path.join(tiny_world["world"], "raw", "captions", "test.de.txt"), encoding="utf-8").read().splitlines()
    assert [refs[i] for i in range(24)] == raw  # sample id i is the i-th image of the caption file
    out = run(SCORE + ["--hyp", log, "--ref", log, "--lang", "de", "--results", str(tmp_path / "r.json"),
                       "--key", "captioning.de"])
    scores = json.loads(out.stdout)
    assert set(scores) == {"bleu4", "cider"} and 0 <= scores["bleu4"] <= 100
    assert json.load(open(tmp_path / "r.json"))["captioning"]["de"] == scores


def test_captioning_validation_bleu_equals_generate_and_score(trained, tiny_world, caplog, tmp_path):
    """Captioning fine-tuned with --eval-bleu: the BLEU-4 of its last validation is fairseq-generate's captions
    of the same images scored by m3p-caption-score, per language; checkpoint_best.pt is the best by it."""
    from fairseq_cli import generate

    from m3p_fairseq.evaluation.caption_score_cli import main as score_main

    from .test_downstream_tasks import fairseq_stdout
    from .test_validation import _best_updates, _train

    data, save = tiny_world["data"], str(tmp_path / "cap")
    run = _train(caplog, data, save, "--task", "m3p_captioning", "--arch", "m3p_seq2seq_tiny", "--criterion",
                 "m3p_generation", "--finetune-from-model", trained[0], "--caption-langs", "en,de", "--lr", "3e-3",
                 "--batch-size", "16", "--save-interval-updates", "40", "--validate-interval", "1000", "--save-interval",
                 "1000", "--eval-bleu", "--eval-bleu-args", '{"beam": 2, "max_len_b": 20}', "--best-checkpoint-metric",
                 "bleu", "--maximize-best-checkpoint-metric", updates=80)
    last, scored = run["valid"][-1], {}
    for lang in ("en", "de"):
        out = fairseq_stdout(generate, [data, "--user-dir", "m3p_fairseq", "--task", "m3p_captioning", "--path",
                                        os.path.join(save, "checkpoint_last.pt"), "--gen-subset", "valid",
                                        "--target-lang", lang, "--beam", "2", "--max-len-b", "20", "--batch-size", "8",
                                        "--post-process", "sentencepiece", "--cpu"])
        log = str(tmp_path / f"gen.{lang}.txt")
        open(log, "w").write(out)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            score_main(["--hyp", log, "--ref", log, "--lang", lang])
        scored[lang] = json.loads(buf.getvalue())["bleu4"]
        assert float(last[f"valid_bleu_{lang}"]) == scored[lang], lang
    assert max(scored.values()) > 0  # (a model that writes nothing would agree trivially)
    assert _best_updates(save)[1] == max(float(r["valid_bleu"]) for r in run["valid"])


def _one_line_error(res, *needles):
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    for n in needles:
        assert n in last, res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_bad_input_unknown_target_language(trained, tiny_world):
    ckpt, _ = trained
    _one_line_error(_generate(tiny_world["data"], ckpt, "--target-lang", "xx", check=False),
                    "--target-lang 'xx' is not one of the model's languages")


def test_bad_input_image_without_features(trained, tiny_world, tmp_path):
    ckpt, _ = trained
    data = str(tmp_path / "data")
    shutil.copytree(tiny_world["data"], data, symlinks=False)
    ids = os.path.join(data, "captions", "de", "test.ids")
    lines = open(ids).read().splitlines()
    lines[3] = "no_such_image"
    open(ids, "w").write("\n".join(lines) + "\n")
    _one_line_error(_generate(data, ckpt, "--target-lang", "de", check=False), "test.ids", "'no_such_image'",
                    "has no features")


def test_bad_input_understanding_checkpoint(tiny_world, tmp_path):
    save = str(tmp_path / "und")
    run([os.path.join(BIN, "fairseq-train"), tiny_world["data"], "--user-dir", "m3p_fairseq", "--task",
         "multitask_multimodal", "--arch", "m3p_tiny", "--criterion", "m3p_pretrain", "--objectives", "mmlm",
         "--encoder-layers", "1", "--optimizer", "adam", "--lr", "1e-4", "--max-update", "1", "--batch-size", "4", "--cpu", "--num-workers", "0",
         "--save-dir", save, "--no-epoch-checkpoints", "--disable-validation", "--log-format", "json",
         "--data-buffer-size", "0"])
    _one_line_error(_generate(tiny_world["data"], os.path.join(save, "checkpoint_last.pt"), "--target-lang", "de",
                              check=False), "arch m3p_tiny", "m3p_captioning needs an M3P generation model")


def _hypotheses(stdout):
    """sample id -> detokenized hypothesis (the D- lines of fairseq-generate)."""
    return {int(l.split("\t")[0][2:]): l.split("\t")[2] for l in stdout.splitlines() if l.startswith("D-")}


def test_hub_caption_and_translate_match_fairseq_generate(trained, tiny_world):
    """The hub's caption/translate run the same beam search as fairseq-generate: same words."""
    from m3p_fairseq import M3PHub
    from m3p_fairseq.data.region_store import RegionStore
    from m3p_fairseq.errors import M3PInputError

    ckpt, _ = trained
    hub = M3PHub.from_pretrained(ckpt, data_name_or_path=tiny_world["data"])
    store = RegionStore(os.path.join(tiny_world["data"], "regions", "test.json"))
    ids = open(os.path.join(tiny_world["world"], "raw", "captions", "test.de.ids")).read().split()
    captions = _hypotheses(_generate(tiny_world["data"], ckpt, "--target-lang", "de", "--beam", "3").stdout)
    for i in range(3):
        assert hub.caption(ids[i], "de", beam=3, store=store) == captions[i]
    # the same image as arrays (pixel boxes + size)
    item = store.get(store.index_of(ids[0]))
    assert hub.caption(item["features"], "de", beam=3, boxes=item["boxes"], width=item["width"],
                       height=item["height"]) == captions[0]

    res = run([os.path.join(BIN, "fairseq-generate"), tiny_world["data"], "--user-dir", "m3p_fairseq", "--task",
               "m3p_mmt", "--path", ckpt, "--gen-subset", "test.en-de", "--beam", "3", "--batch-size", "8",
               "--post-process", "sentencepiece", "--cpu"])
    translations = _hypotheses(res.stdout)
    sources = open(os.path.join(tiny_world["world"], "raw", "captions", "test.en.txt"), encoding="utf-8").read().splitlines()
    for i in range(3):
        assert hub.translate(sources[i], ids[i], "en", "de", beam=3, store=store) == translations[i]
    with pytest.raises(M3PInputError, match="not one of the model's"):
        hub.caption(ids[0], "xx", store=store)
    with pytest.raises(M3PInputError, match="understanding model"):
        hub.score(ids[0], "a dog", store=store)


def test_generate_with_the_papers_beam_of_10(trained, tiny_world):
    """fairseq-generate --beam 10 (the paper's for captions): ten scored hypotheses per image, best first."""
    ckpt, _ = trained
    res = _generate(tiny_world["data"], ckpt, "--target-lang", "en", "--beam", "10", "--nbest", "10")
    hyps = {}
    for line in res.stdout.splitlines():
        if line.startswith("D-"):
            sid, score, text = line.split("\t")
            hyps.setdefault(int(sid[2:]), []).append((float(score), text))
    assert sorted(hyps) == list(range(24)) and all(len(h) == 10 for h in hyps.values())
    for h in hyps.values():
        scores = [s for s, _ in h]
        assert scores == sorted(scores, reverse=True) and len({t for _, t in h}) > 1
