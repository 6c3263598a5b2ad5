"""Every downstream task trains a few updates with stock fairseq-train from a pre-trained checkpoint,
then evaluates (stock fairseq-validate / fairseq-generate, and m3p-downstream-eval into a results
JSON); a checkpoint of the wrong model kind ends in one line.

Training and evaluation run in this process through fairseq_cli's own ``main`` (a new interpreter
per command would cost seconds of imports each); the error lines go through real processes.
"""
import contextlib
import io
import json
import logging
import os
import re

import pytest

from .conftest import BIN, padded_text_batch, run

CLI = os.path.join(BIN, "fairseq-train")


def fairseq_train(data, save_dir, *argv, updates=4, batch=8):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import train

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        data, "--user-dir", "m3p_fairseq", "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "1e-3",
        "--lr-scheduler", "fixed", "--max-update", str(updates), "--batch-size", str(batch), "--cpu",
        "--num-workers", "0", "--seed", "1", "--save-dir", save_dir, "--no-epoch-checkpoints",
        "--disable-validation", "--log-format", "json", "--log-interval", "1", *argv])
    train.main(convert_namespace_to_omegaconf(args))
    path = os.path.join(save_dir, "checkpoint_last.pt")
    assert os.path.exists(path)
    return path


def fairseq_stdout(module, argv):
    """Run a fairseq_cli entry point in-process; returns what it printed."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_generation_parser() if module.__name__.endswith("generate") else options.get_validation_parser()
    args = options.parse_args_and_arch(parser, argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.main(convert_namespace_to_omegaconf(args) if module.__name__.endswith("generate") else args)
    return out.getvalue()


def downstream_eval(*argv):
    from m3p_fairseq.evaluation.downstream_cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(list(argv))
    return out.getvalue()


def as_generation_model(und_checkpoint, data, out):
    """An understanding checkpoint made the generation model's start the way a user makes XLM-R's:
    a folder with model.pt, dict.txt and sentencepiece.bpe.model, then m3p-import-xlmr --generation."""
    from preprocess.import_xlmr import main as import_xlmr

    src = os.path.join(out, "src")
    os.makedirs(src)
    os.symlink(os.path.abspath(und_checkpoint), os.path.join(src, "model.pt"))
    for name in ("dict.txt", "sentencepiece.bpe.model"):
        os.symlink(os.path.abspath(os.path.join(data, name)), os.path.join(src, name))
    langs = ",".join(sorted(os.listdir(os.path.join(data, "text"))))
    import_xlmr([src, os.path.join(out, "gen"), "--generation", "--langs", langs, "--region-feat-dim", "32"])
    return os.path.join(out, "gen", "model.pt")


@pytest.fixture(scope="module")
def pretrained(tiny_world, tmp_path_factory):
    """A few updates of pre-training for each model kind: the starting points of fine-tuning. The generation
    model starts from the understanding one (as the demo's starts from its stand-in for XLM-R)."""
    base = tmp_path_factory.mktemp("pretrained")
    data = tiny_world["data"]
    und = fairseq_train(data, str(base / "und"), "--task", "multitask_multimodal", "--arch", "m3p_tiny",
                        "--criterion", "m3p_pretrain", "--objectives", "mmlm,vlm", updates=4)
    converted = as_generation_model(und, data, str(base / "converted"))
    gen = fairseq_train(data, str(base / "gen"), "--task", "multitask_multimodal", "--arch", "m3p_seq2seq_tiny",
                        "--criterion", "m3p_generation", "--objectives", "xdae,ic", "--restore-file", converted,
                        "--reset-optimizer", "--reset-dataloader", "--reset-meters", "--reset-lr-scheduler", updates=4)
    return {"und": und, "gen": gen, "converted": converted}


def test_generation_model_from_an_understanding_checkpoint(tiny_world, pretrained):
    """The converted generation model computes, at initialization, the encoder states of the understanding
    checkpoint it came from (language vectors at zero), its decoder shares those layers, and the fresh parts
    (cross-attention) are what differs."""
    import torch
    from fairseq import checkpoint_utils

    from m3p_fairseq.models.m3p_seq2seq import M3PSeq2SeqModel, assert_ties

    data = tiny_world["data"]
    (und,), _, task = checkpoint_utils.load_model_ensemble_and_task([pretrained["und"]], arg_overrides={"data": data})
    (gen,), _, _ = checkpoint_utils.load_model_ensemble_and_task([pretrained["converted"]], arg_overrides={"data": data})
    assert isinstance(gen, M3PSeq2SeqModel)
    assert_ties(gen.encoder.sentence_encoder, gen.decoder)
    tokens, mask = padded_text_batch(task.source_dictionary)
    und.eval(), gen.eval()
    with torch.no_grad():
        ref, _ = und.encoder.extract_features(tokens)
        for lang in range(len(gen.langs)):  # every language: the language vectors start at zero
            ours = gen.encoder(tokens, src_lang=torch.full((3,), lang))["encoder_out"][0].transpose(0, 1)
            assert (ours - ref)[mask].abs().max().item() < 1e-5
    assert torch.equal(gen.decoder.layers[0].fc1.weight, und.encoder.sentence_encoder.layers[0].fc1.weight)


def test_retrieval_finetune_full_and_two_stage(tiny_world, pretrained, tmp_path):
    data = tiny_world["data"]
    ckpt = fairseq_train(data, str(tmp_path / "ret"), "--task", "m3p_retrieval", "--arch", "m3p_tiny",
                         "--criterion", "m3p_retrieval", "--pretrained-checkpoint", pretrained["und"],
                         "--caption-langs", "en", "--code-switch", "--dual-dim", "32", updates=3)
    results = str(tmp_path / "results.json")
    out = downstream_eval("retrieval", data, "--path", ckpt, "--langs", "en,de", "--results", results,
                          "--key", "retrieval.finetune_en", "--cpu")
    assert "en: mR" in out and "de: mR" in out
    out = downstream_eval("retrieval", data, "--path", ckpt, "--langs", "en", "--two-stage", "--top-k", "3",
                          "--compare-full", "--results", results, "--key", "retrieval.two_stage", "--cpu")
    doc = json.load(open(results))
    r = doc["retrieval"]
    assert set(r["finetune_en"]) == {"en", "de"} and 0 < r["chance_mR"] < 100
    two = r["two_stage"]["en"]
    assert two["full_pairs"] == 24 * 24 and 0 < two["pairs"] < two["full_pairs"]
    assert {"mR", "dual_mR", "full_mR"} <= set(two)
    assert abs(two["full_mR"] - r["finetune_en"]["en"]["mR"]) < 1e-6  # the same full matrix either way
    # two-stage sharded over two workers through the command, merged: the same numbers
    shards = [str(tmp_path / f"s{k}.npz") for k in range(2)]
    for k, path in enumerate(shards):
        downstream_eval("retrieval", data, "--path", ckpt, "--langs", "en", "--two-stage", "--top-k", "3",
                        "--num-shards", "2", "--shard-id", str(k), "--scores-out", path, "--cpu")
    merged = str(tmp_path / "merged.json")
    downstream_eval("retrieval", data, "--path", ckpt, "--langs", "en", "--two-stage", "--top-k", "3",
                    "--merge", *shards, "--results", merged, "--key", "retrieval.two_stage", "--cpu")
    again = json.load(open(merged))["retrieval"]["two_stage"]["en"]
    assert again["mR"] == two["mR"] and again["pairs"] == two["pairs"]


def test_retrieval_finetune_with_tcl_kept_on(tiny_world, pretrained, tmp_path, caplog):
    """Retrieval fine-tuning as the ret objective beside TCL (retrieval.sh finetune_en with KEEP_OBJECTIVES=tcl):
    stock fairseq-train --finetune-from-model, updates alternating between the two objectives, and a
    checkpoint that the retrieval evaluation reads, two-stage included (its dual encoder was trained)."""
    data = tiny_world["data"]
    with caplog.at_level(logging.INFO):
        ckpt = fairseq_train(data, str(tmp_path / "ret_tcl"), "--task", "multitask_multimodal", "--arch", "m3p_tiny",
                             "--criterion", "m3p_pretrain", "--objectives", "ret,tcl", "--objective-ratios", "1,1",
                             "--finetune-from-model", pretrained["und"], "--caption-langs", "en", "--dual-dim", "32",
                             updates=6)
    per_update = [json.loads(r.getMessage()) for r in caplog.records if r.name == "train_inner"]
    seen = {k: sum(int(s.get(f"{k}_batches") or 0) for s in per_update) for k in ("ret", "tcl")}
    assert seen["ret"] > 0 and seen["tcl"] > 0 and seen["ret"] + seen["tcl"] == len(per_update), seen
    assert any("ret_vlm_loss" in s and "ret_nce_loss" in s for s in per_update)
    out = downstream_eval("retrieval", data, "--path", ckpt, "--langs", "en,de", "--two-stage", "--top-k", "3",
                          "--results", str(tmp_path / "r.json"), "--cpu")
    assert "en: mR" in out and "de: mR" in out and "dual_mR" in out


def test_xnli_and_ntg_with_pre_training_objectives_kept_on(tiny_world, pretrained, tmp_path, caplog):
    """English XNLI beside TCL (xnli,tcl) and English NTG beside xDAE (ntg,xdae): stock fairseq-train
    --finetune-from-model, updates of both objectives, checkpoints the evaluations read (the NTG outputs with
    the share written in the requested language)."""
    data = tiny_world["data"]
    runs = {}
    for name, arch, criterion, objectives, start in (
            ("xnli", "m3p_tiny", "m3p_pretrain", "xnli,tcl", pretrained["und"]),
            ("ntg", "m3p_seq2seq_tiny", "m3p_generation", "ntg,xdae", pretrained["gen"])):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            runs[name] = fairseq_train(data, str(tmp_path / name), "--task", "multitask_multimodal", "--arch", arch,
                                       "--criterion", criterion, "--objectives", objectives, "--objective-ratios",
                                       "1,1", "--finetune-from-model", start, updates=6)
        per_update = [json.loads(r.getMessage()) for r in caplog.records if r.name == "train_inner"]
        # (an objective's loss is logged in the updates that trained it: one objective per update)
        seen = {k: sum(s.get(f"{k}_loss") is not None for s in per_update) for k in objectives.split(",")}
        assert all(seen.values()) and sum(seen.values()) == len(per_update), seen
    results = str(tmp_path / "r.json")
    downstream_eval("xnli", data, "--path", runs["xnli"], "--langs", "en,de", "--results", results, "--cpu")
    downstream_eval("generate", data, "--path", runs["ntg"], "--targets", "en,de", "--beam", "2", "--max-len-b",
                    "12", "--results", results, "--key", "ntg", "--cpu")
    doc = json.load(open(results))
    assert set(doc["xnli"]) == {"en", "de"} and all(v["n"] == 72 for v in doc["xnli"].values())
    assert set(doc["ntg"]) == {"en", "de"}
    assert all(0 <= v["right_language"] <= 100 and "bleu4" in v for v in doc["ntg"].values())


def _raw_count(path):
    """Examples of one IGLUE-format file: JSON lines, a question dict or a list."""
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            return sum(1 for line in f if line.strip())
        return len(json.load(f))


def test_world_iglue_import_loads_through_the_tasks_and_trains_beside_tcl(tiny_world, pretrained, tmp_path):
    """m3p-prepare-world imports the world's IGLUE-style sets (raw/iglue, in e-bug/iglue's layout) into one task
    folder per job: each split of each language loads through its task (m3p_xvnli, m3p_xgqa, m3p_marvl; xFlickr&CO's
    captions through m3p_retrieval) with as many examples as its file holds. Then iglue.sh fine-tunes MaRVL beside
    TCL (KEEP_OBJECTIVES=tcl: the marvl objective's two-image batches and TCL's text batches, one objective per
    update), keeps the checkpoint best on English dev by marvl_acc, and the IGLUE evaluation reads it zero-shot."""
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from .conftest import ROOT

    raw, iglue = os.path.join(tiny_world["world"], "raw", "iglue"), os.path.join(tiny_world["data"], "iglue")
    assert sorted(os.listdir(iglue)) == ["marvl", "xflickrco", "xgqa", "xvnli"]
    xv, few = os.path.join(raw, "XVNLI", "annotations"), os.path.join(raw, "xGQA", "annotations", "few_shot")
    nlvr2, marvl = os.path.join(raw, "nlvr2", "annotations"), os.path.join(raw, "marvl", "zero_shot", "annotations")
    expected = {
        "xvnli": {"train.en": f"{xv}/en/train.jsonl", "valid.en": f"{xv}/en/dev.jsonl", "test.zh": f"{xv}/zh/test.jsonl",
                  "train_5.de": f"{xv}/de/train_5.jsonl",
                  "test_mt.fr": f"{raw}/XVNLI/annotations_machine-translate/fr/test.jsonl"},
        "xgqa": {"train.en": f"{raw}/gqa/annotations/train.json", "test.cs": f"{few}/cs/test.json",
                 "valid.de": f"{few}/de/dev.json", "train_1.ja": f"{few}/ja/train_1.json"},
        "marvl": {"train.en": f"{nlvr2}/train.jsonl", "valid.en": f"{nlvr2}/dev.jsonl", "test.de": f"{marvl}/marvl-de.jsonl",
                  "train_10x2.zh": f"{raw}/marvl/few_shot/annotations/marvl-zh_train10x2.jsonl"},
    }
    def iglue_task(job, *flags):
        args = options.parse_args_and_arch(options.get_training_parser(), [
            os.path.join(iglue, job), "--task", f"m3p_{job}", "--arch", "m3p_tiny", "--criterion", "m3p_iglue", "--cpu",
            *flags])
        return tasks.setup_task(convert_namespace_to_omegaconf(args).task)

    for job, splits in expected.items():
        task = iglue_task(job)
        for split, path in splits.items():
            task.load_dataset(split)
            assert len(task.dataset(split)) == _raw_count(path), (job, split)
        batch = task.dataset(split).collater([task.dataset(split)[i] for i in range(2)])
        assert batch["net_input"]["src_tokens"].size(0) == 2 * task.images_per_example
    # --code-switch: the English training texts switched (the world's dictionaries, linked into the task folder)
    plain, switched = iglue_task("xvnli"), iglue_task("xvnli", "--code-switch", "--code-switch-langs", "de")
    for t in (plain, switched):
        t.load_dataset("train.en")
        t.load_dataset("valid.en")
    differ = [not plain.dataset("train.en")[i]["text"].equal(switched.dataset("train.en")[i]["text"]) for i in range(60)]
    assert 10 < sum(differ) < 60
    assert all(plain.dataset("valid.en")[i]["text"].equal(switched.dataset("valid.en")[i]["text"]) for i in range(60))
    args = options.parse_args_and_arch(options.get_training_parser(), [
        os.path.join(iglue, "xflickrco"), "--task", "m3p_retrieval", "--arch", "m3p_tiny", "--criterion",
        "m3p_retrieval", "--cpu"])
    task = tasks.setup_task(convert_namespace_to_omegaconf(args).task)
    task.load_dataset("test.de")  # the loss's pairs, beside the recall's query batches (evaluation/validation.py)
    pairs = task.dataset("test.de").datasets[0]
    assert len(pairs) == _raw_count(f"{raw}/xFlickrCO/annotations/de/test.jsonl")

    out = tmp_path / "out"
    run(["bash", os.path.join(ROOT, "examples", "m3p", "iglue.sh"), "marvl", "finetune", os.path.join(iglue, "marvl"),
         pretrained["und"], str(out)],
        env={"ARCH": "m3p_tiny", "KEEP_OBJECTIVES": "tcl", "KEEP_RATIOS": "1,1", "UPDATES": "4", "VALID_EVERY": "2",
             "BATCH": "4", "UPDATE_FREQ": "1", "DEVICE": "--cpu", "LOG_INTERVAL": "1"})
    log = (out / "marvl.log").read_text()
    per_update = [dict(re.findall(r"(marvl|tcl)_batches=(\d)", line)) for line in re.findall(r"train_inner \|.*", log)]
    assert len(per_update) == 4 and all(sorted(u.values())[-1:] == ["1"] and list(u.values()).count("1") == 1
                                        for u in per_update)
    assert {k for u in per_update for k, v in u.items() if v == "1"} == {"marvl", "tcl"}  # one objective per update
    # every validation (each 2 updates) counts for checkpoint_best, by the marvl objective's accuracy on English dev
    accs = [float(a) for a in re.findall(r"\| valid \|.*\| marvl_acc ([\d.]+) \|", log)]
    assert len(accs) == 2
    assert checkpoint_utils.load_checkpoint_to_cpu(str(out / "marvl" / "checkpoint_best.pt"))["extra_state"][
        "val_loss"] == max(accs)
    doc = json.load(open(out / "results.json"))["iglue"]["marvl"]
    assert doc["en"]["n"] == _raw_count(f"{nlvr2}/test.jsonl") and doc["chance"] == 50.0


def test_mild_with_and_without_context(tiny_world, pretrained, tmp_path):
    data = os.path.join(tiny_world["data"], "mild_corpus")
    ckpt = fairseq_train(data, str(tmp_path / "mild"), "--task", "m3p_retrieval", "--arch", "m3p_tiny",
                         "--criterion", "m3p_retrieval", "--pretrained-checkpoint", pretrained["und"],
                         "--caption-langs", "en", "--context", updates=2)
    results = str(tmp_path / "r.json")
    for flag, key in ((["--context"], "with_context"), ([], "without_context")):
        downstream_eval("retrieval", data, "--path", ckpt, "--langs", "en,de", "--max-images", "12",
                        "--results", results, "--key", f"mild.{key}", "--cpu", *flag)
    mild = json.load(open(results))["mild"]
    assert set(mild["with_context"]) == set(mild["without_context"]) == {"en", "de"}


def test_xnli_finetune_on_en_test_every_language(tiny_world, pretrained, tmp_path):
    from fairseq_cli import validate

    data = tiny_world["data"]
    ckpt = fairseq_train(data, str(tmp_path / "xnli"), "--task", "m3p_xnli", "--arch", "m3p_tiny",
                         "--criterion", "m3p_classification", "--pretrained-checkpoint", pretrained["und"], updates=3)
    log, root = io.StringIO(), logging.getLogger()
    handler, level = logging.StreamHandler(log), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:  # the stock command, one subset per language
        fairseq_stdout(validate, [data, "--user-dir", "m3p_fairseq", "--task", "m3p_xnli", "--path", ckpt,
                                  "--valid-subset", "test.en,test.de", "--criterion", "m3p_classification",
                                  "--batch-size", "32", "--cpu"])
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    lines = [line for line in log.getvalue().splitlines() if "subset" in line and "accuracy" in line]
    assert len(lines) == 2 and "'test.de' subset" in lines[1], log.getvalue()[-2000:]
    results = str(tmp_path / "r.json")
    downstream_eval("xnli", data, "--path", ckpt, "--results", results, "--cpu")
    acc = json.load(open(results))["xnli"]
    assert set(acc) == {"ar", "cs", "de", "en", "es", "fr", "it", "ja", "ru", "zh"}
    assert all(0 <= v["acc"] <= 100 and v["n"] == 72 for v in acc.values())


def test_mmt_directions(tiny_world, pretrained, tmp_path):
    from fairseq_cli import generate

    data = tiny_world["data"]
    ckpt = fairseq_train(data, str(tmp_path / "mmt"), "--task", "m3p_mmt", "--arch", "m3p_seq2seq_tiny",
                         "--criterion", "m3p_generation", "--pretrained-checkpoint", pretrained["gen"],
                         "--directions", "en-de,de-en", updates=3)
    out = fairseq_stdout(generate, [data, "--user-dir", "m3p_fairseq", "--task", "m3p_mmt", "--path", ckpt,
                                    "--gen-subset", "test.en-de", "--beam", "2", "--batch-size", "8",
                                    "--post-process", "sentencepiece", "--max-len-b", "20", "--cpu"])
    refs = sorted((int(l.split("\t")[0][2:]), l.split("\t")[1]) for l in out.splitlines() if l.startswith("T-"))
    raw = open(os.path.join(tiny_world["world"], "raw", "captions", "test.de.txt"), encoding="utf-8").read().splitlines()
    assert [r for _, r in refs] == raw  # German references: the target side of en-de
    results = str(tmp_path / "r.json")
    downstream_eval("generate", data, "--path", ckpt, "--targets", "en-de,de-en", "--beam", "2", "--max-len-b", "20",
                    "--results", results, "--key", "mmt", "--cpu")
    mmt = json.load(open(results))["mmt"]
    assert set(mmt) == {"en-de", "de-en"} and all(0 <= v["bleu4"] <= 100 for v in mmt.values())


def test_ntg_and_captioning(tiny_world, pretrained, tmp_path):
    data = tiny_world["data"]
    results = str(tmp_path / "r.json")
    ntg = fairseq_train(data, str(tmp_path / "ntg"), "--task", "m3p_ntg", "--arch", "m3p_seq2seq_tiny",
                        "--criterion", "m3p_generation", "--pretrained-checkpoint", pretrained["gen"], updates=3)
    downstream_eval("generate", data, "--path", ntg, "--targets", "en,de,ru", "--beam", "2", "--max-len-b", "12",
                    "--results", results, "--key", "ntg", "--cpu")
    cap = fairseq_train(data, str(tmp_path / "cap"), "--task", "m3p_captioning", "--arch", "m3p_seq2seq_tiny",
                        "--criterion", "m3p_generation", "--finetune-from-model", pretrained["gen"],
                        "--caption-langs", "en,de", updates=3)
    downstream_eval("generate", data, "--path", cap, "--targets", "en,ja", "--beam", "2", "--max-len-b", "12",
                    "--results", results, "--key", "captioning", "--cpu")
    doc = json.load(open(results))
    assert set(doc["ntg"]) == {"en", "de", "ru"} and set(doc["captioning"]) == {"en", "ja"}
    assert all({"bleu4", "cider"} <= set(v) for v in list(doc["ntg"].values()) + list(doc["captioning"].values()))


def _one_line_error(res, *needles):
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    for n in needles:
        assert n in last, res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_bad_input_checkpoint_of_the_wrong_model(tiny_world, pretrained, tmp_path):
    res = run([CLI, tiny_world["data"], "--user-dir", "m3p_fairseq", "--task", "m3p_mmt", "--arch", "m3p_seq2seq_tiny",
               "--criterion", "m3p_generation", "--pretrained-checkpoint", pretrained["und"], "--max-update", "1",
               "--batch-size", "4",
               "--cpu", "--save-dir", str(tmp_path / "ck")], check=False)
    _one_line_error(res, pretrained["und"], "arch m3p_tiny (an M3P understanding model)",
                    "m3p_mmt fine-tunes an M3P generation model")
    res = run([os.path.join(BIN, "m3p-downstream-eval"), "retrieval", tiny_world["data"], "--path", pretrained["gen"]],
              check=False)
    _one_line_error(res, "arch m3p_seq2seq_tiny (an M3P generation model)", "'retrieval' needs an M3P understanding model")


@pytest.mark.parametrize("flags", [["--restore-file", "{ck}", "--reset-optimizer", "--reset-dataloader",
                                    "--reset-meters"], ["--finetune-from-model", "{ck}"]])
def test_bad_input_wrong_model_through_fairseq_flags(tiny_world, pretrained, tmp_path, flags):
    """fairseq's own way of starting from a checkpoint: a generation checkpoint for an understanding
    task ends in one line naming the file (fairseq alone prints two tracebacks)."""
    res = run([CLI, tiny_world["data"], "--user-dir", "m3p_fairseq", "--task", "m3p_retrieval", "--arch", "m3p_tiny",
               "--criterion", "m3p_retrieval", *[f.format(ck=pretrained["gen"]) for f in flags], "--max-update", "1", "--batch-size", "4", "--cpu",
               "--save-dir", str(tmp_path / "ck")], check=False)
    _one_line_error(res, pretrained["gen"], "holds an M3P generation model", "needs an understanding model")
    assert not os.path.exists(tmp_path / "ck" / "checkpoint_last.pt")


def test_bad_input_checkpoint_of_other_sizes(tiny_world, pretrained, tmp_path):
    res = run([CLI, tiny_world["data"], "--user-dir", "m3p_fairseq", "--task", "m3p_retrieval", "--arch", "m3p_tiny",
               "--encoder-ffn-embed-dim", "64", "--criterion", "m3p_retrieval", "--restore-file", pretrained["und"],
               "--reset-optimizer", "--max-update", "1", "--batch-size", "4", "--cpu",
               "--save-dir", str(tmp_path / "ck")], check=False)
    _one_line_error(res, pretrained["und"], "cannot load its weights into this model", "size mismatch")
