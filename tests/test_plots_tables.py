"""Pictures and tables of the results: they read what the demo writes and fail clearly on bad files."""
import json
import os

from m3p_fairseq.evaluation.plots import main as plots_main, parse_log, parse_train_log, validation_panels
from m3p_fairseq.evaluation.tables import render

DOC = {"retrieval": {"zero_shot": {"en": {"mR": 40.0}, "de": {"mR": 10.0}}, "finetune_en": {"en": {"mR": 60.0}},
                     "chance_mR": 5.3},
       "captioning": {"en": {"bleu4": 20.0, "cider": 50.0}}}


def test_parse_simple_and_json_logs(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "2026 | INFO | train_inner | epoch 001:    100 / 392 loss=7.6, xmlm_loss=9.2, vlm_acc=50.4, num_updates=100, lr=1e-3\n"
        '2026 | INFO | train_inner | {"epoch": 1, "vlm_loss": "0.69", "num_updates": "200", "mmlm_loss": null}\n'
        "2026 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 7.9 | mR_en 43.06 | mR 43.75 | "
        "bleu_en-de 7.5 | num_updates 100 | best_mR 43.75\n"
        '2026 | INFO | valid.en | {"epoch": 1, "valid.en_loss": "7.5", "valid.en_accuracy": "40.1", '
        '"valid.en_num_updates": "200"}\n'
        '2026 | INFO | train | {"epoch": 1, "train_loss": "7.2", "train_num_updates": "200"}\n'
        "2026 | INFO | fairseq_cli.train | done\n")
    s = parse_train_log(str(log))
    assert s["xmlm_loss"] == [(100, 9.2)] and s["vlm_loss"] == [(200, 0.69)] and "mmlm_loss" not in s
    every = parse_log(str(log))  # the validation lines, per subset, both formats
    assert set(every) == {"train_inner", "valid", "valid.en"}
    assert every["valid"]["mR_en"] == [(100, 43.06)] and every["valid"]["bleu_en-de"] == [(100, 7.5)]
    assert every["valid.en"] == {"loss": [(200, 7.5)], "accuracy": [(200, 40.1)]}
    assert [t for t, _ in validation_panels(every["valid"])] == ["loss", "mR", "bleu"]


def test_plots_written(tmp_path, capsys):
    res = tmp_path / "results.json"
    res.write_text(json.dumps(DOC))
    log = tmp_path / "train.log"
    log.write_text("".join(f"x | train_inner | epoch 001: loss=1, vlm_loss={1 / (i + 1):.3f}, num_updates={i}\n"
                           for i in range(1, 6)))
    plots_main(["--results", str(res), "--train-log", str(log), "--out", str(tmp_path / "plots")])
    written = capsys.readouterr().out.split()
    # a picture per retrieval setting, the settings side by side, captioning BLEU-4 and CIDEr, the losses
    assert len(written) == 6 and all(os.path.getsize(p) > 1000 and p.endswith(".png") for p in written)


def test_tables_one_column_per_language():
    text = render(DOC)
    assert "| setting | en | de |" in text and "| zero_shot | 40.0 | 10.0 |" in text
    assert "Chance level: mR 5.3" in text and "| captioning | 20.0 |" in text


def test_merge_results_of_the_demo_lanes(tmp_path):
    """The demo's lanes write one results file each; the merge keeps every leaf of every part."""
    from m3p_fairseq.evaluation.results import merge_results, update_results
    target, a, b = (str(tmp_path / n) for n in ("results.json", "a.json", "b.json"))
    update_results(target, "retrieval.zero_shot.en", {"mR": 40.0})
    update_results(a, "retrieval.finetune_en.en", {"mR": 80.0})
    update_results(a, "retrieval.two_stage.en", {"mR": 81.0, "pairs": 1200})
    update_results(b, "retrieval.finetune_all.de", {"mR": 20.0})
    update_results(b, "xnli.en", {"acc": 60.0})
    doc = merge_results(target, [a, b, str(tmp_path / "missing.json")])
    assert doc == json.load(open(target))
    assert doc["retrieval"]["zero_shot"]["en"]["mR"] == 40.0
    assert doc["retrieval"]["finetune_en"]["en"]["mR"] == 80.0 and doc["retrieval"]["two_stage"]["en"]["pairs"] == 1200
    assert doc["retrieval"]["finetune_all"]["de"]["mR"] == 20.0 and doc["xnli"]["en"]["acc"] == 60.0
    assert not os.path.exists(target + ".tmp")


def test_captioning_table_keeps_the_pretrained_and_fine_tuned_rows_apart(tmp_path):
    """The demo scores the pre-trained model's captions (captioning_pretrained, with the objects they name)
    and the fine-tuned ones (captioning); a later write of a whole section keeps the other tool's numbers."""
    from m3p_fairseq.evaluation.results import update_results
    path = str(tmp_path / "r.json")
    update_results(path, "captioning_pretrained.en", {"bleu4": 30.0, "cider": 300.0})
    update_results(path, "captioning_pretrained.en", {"object_precision": 80.0})
    update_results(path, "captioning_pretrained", {"chance_object_precision": 8.3})
    update_results(path, "captioning", {"en": {"bleu4": 40.0, "cider": 400.0}, "de": {"bleu4": 35.0, "cider": 350.0}})
    update_results(path, "captioning", {"en": {"note": "again"}})  # a section-wide write merges per language
    doc = json.load(open(path))
    assert doc["captioning"]["en"] == {"bleu4": 40.0, "cider": 400.0, "note": "again"}
    assert doc["captioning_pretrained"]["en"] == {"bleu4": 30.0, "cider": 300.0, "object_precision": 80.0}
    text = render(doc, "captioning")
    assert "| captioning | 40.0 | 35.0 |" in text and "| captioning_pretrained | 30.0 | - |" in text
    assert "Objects named" in text and "| captioning_pretrained | 80.0 |" in text and "8.3%" in text
    only_pretrained = {"captioning_pretrained": doc["captioning_pretrained"]}
    assert "| captioning_pretrained | 30.0 |" in render(only_pretrained)
