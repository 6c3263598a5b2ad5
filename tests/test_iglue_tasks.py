"""IGLUE's understanding tasks: the heads and losses against hand computations, the two-image batches, the
soft answer scores, then the real path: IGLUE-format files -> m3p-import-iglue -> fairseq-train with
validation (accuracy logged, checkpoint_best following it, resume) -> m3p-downstream-eval iglue (accuracy,
R@1 both ways, IGLUE's average, chance / majority) -> the hub, and a YAML config under fairseq-hydra-train."""
import contextlib
import io
import json
import logging
import math
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m3p_fairseq.objectives import class_loss, num_correct, soft_score_loss
from m3p_fairseq.evaluation.iglue import retrieval_recall
from m3p_fairseq.models.iglue_heads import PooledHead
from preprocess import build_spm
from preprocess.iglue import main as import_iglue

from . import iglue_files as F_
from .test_hydra_configs import _hydra, _losses

TINY = ["--arch", "m3p_tiny", "--encoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32",
        "--encoder-attention-heads", "2"]  # 2 x 16


# ---- heads and losses by hand ---------------------------------------------------------------------------

def test_soft_score_bce_is_volta_mean_times_answers():
    torch.manual_seed(0)
    logits, scores = torch.randn(3, 5), torch.zeros(3, 5)
    scores[0, 1], scores[1, 2], scores[1, 0], scores[2, 4] = 1.0, 1.0, 0.3, 0.6
    by_hand = -sum(s * math.log(1 / (1 + math.exp(-x))) + (1 - s) * math.log(1 - 1 / (1 + math.exp(-x)))
                   for x, s in zip(logits.flatten().tolist(), scores.flatten().tolist()))
    assert soft_score_loss(logits, scores).item() == pytest.approx(by_hand, rel=1e-5)
    volta = torch.nn.BCEWithLogitsLoss(reduction="mean")(logits, scores) * scores.size(1) * len(scores)
    assert soft_score_loss(logits, scores).item() == pytest.approx(volta.item(), rel=1e-5)
    # accuracy: the arg-max answer's score (row 1 picks answer 0 of score 0.3 if its logit is the largest)
    logits = torch.tensor([[0.0, 2, 0, 0, 0], [3.0, 0, 1, 0, 0], [0.0, 0, 0, 0, 1]])
    assert num_correct(logits, scores).item() == pytest.approx(1.0 + 0.3 + 0.6)


def test_class_losses_by_hand():
    logits, target = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]), torch.tensor([0, 1])
    ce = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1))) - math.log(math.exp(.5) / (2 * math.exp(.5) + math.exp(3)))
    assert class_loss(logits, target, "ce").item() == pytest.approx(ce, rel=1e-6)
    sig = (lambda x: 1 / (1 + math.exp(-x)))
    bce = sum(-sum(math.log(sig(x)) if k == t else math.log(1 - sig(x)) for k, x in enumerate(row)) / 3
              for row, t in zip(logits.tolist(), target.tolist()))  # volta: BCE on one-hot, mean over classes
    assert class_loss(logits, target, "bce").item() == pytest.approx(bce, rel=1e-6)
    assert num_correct(logits, target).item() == 1


def test_heads_by_hand():
    torch.manual_seed(0)
    d = 4
    feats = torch.randn(6, 3, d)  # 6 rows: for the pair head, examples (0, 1), (2, 3), (4, 5)
    pair, answers = PooledHead(d, 2, "pair").eval(), PooledHead(d, 7, "answers").eval()
    pooled = lambda head: torch.tanh(feats[:, 0] @ head.dense.weight.t() + head.dense.bias)  # noqa: E731

    def simple_classifier(head, x):  # volta's SimpleClassifier: Linear(in, 2d) -> GELU -> LayerNorm -> Linear
        h = F.gelu(x @ head.hidden.weight.t() + head.hidden.bias)
        h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
        return (h * head.layer_norm.weight + head.layer_norm.bias) @ head.out_proj.weight.t() + head.out_proj.bias

    p = pooled(pair)
    by_hand = simple_classifier(pair, torch.cat([p[0::2], p[1::2]], dim=1))  # example i: rows 2i and 2i+1, side by side
    assert pair(feats).shape == (3, 2) and torch.allclose(pair(feats), by_hand, atol=1e-5)
    assert pair.hidden.in_features == 2 * d and pair.hidden.out_features == 2 * d
    assert torch.allclose(answers(feats), simple_classifier(answers, pooled(answers)), atol=1e-5)
    classes = PooledHead(d, 3, "classes").eval()
    assert torch.allclose(classes(feats), pooled(classes) @ classes.out_proj.weight.t() + classes.out_proj.bias, atol=1e-6)


def test_retrieval_recall_ir_and_tr_by_hand():
    """Three images, one caption each; scores S[image, caption]: caption 0 finds image 0, caption 1 image 2,
    caption 2 image 2 (IR R@1 2/3); image 0 finds caption 0, image 1 caption 0, image 2 caption 1 (TR 1/3)."""
    S = torch.tensor([[9.0, 1, 1], [5, 0, 0], [2, 8, 7]])

    class Lookup(torch.nn.Module):
        def forward(self, src_tokens, regions=None, vlm=False, **unused):
            return {"vlm_logits": S[regions[:, 0, 0].long(), src_tokens[:, 1] - 4]}

    captions = [torch.tensor([0, 4 + c, 2]) for c in range(3)]
    images = [{"features": torch.full((2, 3), float(i)), "boxes": torch.zeros(2, 5), "classes": torch.zeros(2).long()}
              for i in range(3)]
    m = retrieval_recall(Lookup(), captions, np.arange(3), images, pad_idx=1)
    assert m["ir_r1"] == pytest.approx(200 / 3) and m["tr_r1"] == pytest.approx(100 / 3)
    assert m["chance_r1"] == pytest.approx(100 / 3, abs=1e-3) and m["num_images"] == 3


# ---- the real path ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def iglue_data(tmp_path_factory):
    """Task folders made by m3p-import-iglue from IGLUE-format files, each language's images in a store."""
    base = tmp_path_factory.mktemp("iglue")
    (base / "raw.txt").write_text("\n".join(F_.vocab_texts()) + "\n", encoding="utf-8")
    build_spm.train([str(base / "raw.txt")], str(base), vocab_size=90)
    vocab = ["--spm", str(base / "sentencepiece.bpe.model"), "--dict", str(base / "dict.txt")]
    root, feats = str(base / "datasets"), str(base / "feats")
    out = {k: str(base / k) for k in ("xvnli", "xgqa", "marvl", "xflickrco")}

    def imp(task, path, lang, split, regions, *extra):
        import_iglue([task, path, "--lang", lang, "--split", split, "--out", out[task], "--regions", regions]
                     + list(extra) + vocab)

    xv, ids = F_.write_xvnli(root)
    store = F_.write_store(f"{feats}/flickr30k.json", ids, F_.xvnli_image_label)
    for path, lang, split in ((f"{xv}/en/train.jsonl.zip", "en", "train"), (f"{xv}/en/dev.jsonl", "en", "valid"),
                              (f"{xv}/en/test.jsonl", "en", "test"), (f"{xv}/ar/test.jsonl", "ar", "test")):
        imp("xvnli", path, lang, split, store)
    gqa, xgqa, ids = F_.write_gqa(root)
    store = F_.write_store(f"{feats}/gqa.json", ids, F_.gqa_image_label)
    answers = ["--answers", f"{gqa}/trainval_ans2label.json"]
    for path, lang, split in ((f"{gqa}/train.json", "en", "train"), (f"{gqa}/valid.json", "en", "valid"),
                              (f"{xgqa}/en/test.json", "en", "test"), (f"{xgqa}/de/test.json", "de", "test")):
        imp("xgqa", path, lang, split, store, *answers)
    nlvr2, marvl, nl_ids, mv_ids = F_.write_marvl(root)
    nl = F_.write_store(f"{feats}/nlvr2.json", nl_ids, F_.nlvr2_image_label)
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        imp("marvl", f"{nlvr2}/{name}.jsonl", "en", split, nl)
    imp("marvl", marvl, "id", "test", F_.write_store(f"{feats}/marvl-id.json", mv_ids, lambda i: 0))
    xfc, _, ids = F_.write_retrieval(root)
    store = F_.write_store(f"{feats}/xflickrco-test.json", ids)
    for lang in ("en", "de"):
        imp("xflickrco", f"{xfc}/{lang}/test.jsonl", lang, "test", store)
    return out


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def fairseq_train(data, save_dir, *argv, epochs=3):
    """fairseq-train in this process, validating on English dev every epoch and keeping the best checkpoint by
    accuracy; returns the validation records it logged."""
    from fairseq import checkpoint_utils, options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import train

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        data, "--user-dir", "m3p_fairseq", *TINY, "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "fixed",
        "--max-epoch", str(epochs), "--batch-size", "6", "--required-batch-size-multiple", "1", "--cpu",
        "--num-workers", "0", "--seed", "1", "--save-dir", save_dir, "--no-epoch-checkpoints", "--valid-subset",
        "valid.en", "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric", "--log-format",
        "json", "--log-interval", "1", *argv])
    # a new process starts without a best score (fairseq keeps it on a function; resuming reloads it)
    if hasattr(checkpoint_utils.save_checkpoint, "best"):
        del checkpoint_utils.save_checkpoint.best
    root, records = logging.getLogger(), _Records()
    level = root.level
    root.addHandler(records)
    root.setLevel(logging.INFO)
    try:
        train.main(convert_namespace_to_omegaconf(args))
    finally:
        root.removeHandler(records)
        root.setLevel(level)
    return [json.loads(m) for m in records.messages if "valid.en_accuracy" in m]


def extra_state(path):
    from fairseq import checkpoint_utils

    return checkpoint_utils.load_checkpoint_to_cpu(path)["extra_state"]


def downstream_eval(*argv):
    from m3p_fairseq.evaluation.downstream_cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(list(argv))
    return out.getvalue()


XVNLI = ("--task", "m3p_xvnli", "--criterion", "m3p_iglue")


@pytest.fixture(scope="module")
def xvnli_run(iglue_data, tmp_path_factory):
    """XVNLI fine-tuned from scratch on English, three epochs: (its folder, the validations it logged)."""
    save = str(tmp_path_factory.mktemp("xvnli") / "ck")
    return save, fairseq_train(iglue_data["xvnli"], save, *XVNLI, epochs=3)


@pytest.fixture(scope="module")
def xvnli_checkpoint(xvnli_run):
    return xvnli_run[0]


def test_xvnli_validation_accuracy_picks_checkpoint_best_and_resumes(iglue_data, xvnli_run):
    xvnli_checkpoint, valid = xvnli_run
    accs = [float(v["valid.en_accuracy"]) for v in valid]
    assert len(accs) == 3 and len(set(accs)) > 1, accs  # validated each epoch, and it learned something
    best = extra_state(f"{xvnli_checkpoint}/checkpoint_best.pt")
    assert best["val_loss"] == pytest.approx(max(accs), abs=0.01)
    # saved at the end of the last epoch reaching the best (ties go to the later one): its iterator's next epoch
    assert best["train_iterator"]["epoch"] == 1 + max(e for e, a in enumerate(accs, 1) if a == max(accs))
    # resume: the saved head and optimizer load, and training goes on from epoch 4
    resumed = os.path.join(os.path.dirname(xvnli_checkpoint), "resumed")
    shutil.copytree(xvnli_checkpoint, resumed)  # (the other tests start from the 3-epoch model)
    again = fairseq_train(iglue_data["xvnli"], resumed, *XVNLI, epochs=4)
    assert [v["epoch"] for v in again] == [4]
    # evaluation: accuracy per language, IGLUE's average over the non-English ones, the chance level
    results = os.path.join(xvnli_checkpoint, "r.json")
    out = downstream_eval("iglue", "xvnli", iglue_data["xvnli"], "--path", f"{xvnli_checkpoint}/checkpoint_best.pt",
                          "--results", results, "--cpu")
    assert "xvnli en: accuracy" in out and "xvnli ar: accuracy" in out
    doc = json.load(open(results))["iglue"]["xvnli"]
    assert doc["en"]["n"] == 9 and doc["ar"]["n"] == 9 and doc["chance"] == 33.33
    assert doc["avg"] == {"acc": doc["ar"]["acc"], "langs": "ar"}


def test_xgqa_and_marvl_from_a_fine_tuned_checkpoint(iglue_data, xvnli_checkpoint, tmp_path):
    """xGQA (soft scores) and MaRVL (two images, volta's one-hot BCE) fine-tune from the XVNLI checkpoint as
    from a pre-trained one (its xvnli head dropped, the new heads' poolers from its VLM head), validate and
    evaluate; the hub runs the fine-tuned heads."""
    from m3p_fairseq import M3PHub
    from m3p_fairseq.data.region_store import RegionStore

    start = f"{xvnli_checkpoint}/checkpoint_best.pt"
    results = str(tmp_path / "r.json")
    for job, extra in (("xgqa", []), ("marvl", ["--classification-loss", "bce"])):
        save = str(tmp_path / job)
        valid = fairseq_train(iglue_data[job], save, "--task", f"m3p_{job}", "--criterion", "m3p_iglue",
                              "--pretrained-checkpoint", start, *extra, epochs=2)
        assert len(valid) == 2 and extra_state(f"{save}/checkpoint_best.pt")["val_loss"] == pytest.approx(
            max(float(v["valid.en_accuracy"]) for v in valid), abs=0.01)
        downstream_eval("iglue", job, iglue_data[job], "--path", f"{save}/checkpoint_best.pt", "--results", results,
                        "--cpu")
    doc = json.load(open(results))["iglue"]
    assert set(doc["xgqa"]) >= {"en", "de", "avg", "majority", "majority_answer"} and doc["xgqa"]["en"]["n"] == 8
    assert doc["xgqa"]["majority_answer"] == "no" and doc["xgqa"]["majority_from"] == "train.en"
    # 'no' leads English training by its soft scores (8 x 1.0 + 8 x 0.3 against 'yes' 8 x 1.0); 2 of 8 test answers
    assert doc["xgqa"]["majority"] == 25.0
    assert set(doc["marvl"]) == {"en", "id", "avg", "chance"} and doc["marvl"]["id"]["n"] == 6
    gqa = M3PHub.from_pretrained(str(tmp_path / "xgqa" / "checkpoint_best.pt"), data_name_or_path=iglue_data["xgqa"])
    store = RegionStore(os.path.join(iglue_data["xgqa"], "regions", "test.en.json"))
    top = gqa.answer("n100001", "yes is it a dog runs on the grass", store=store, top_k=2)
    assert len(top) == 2 and {a for a, _ in top} <= set(F_.GQA_ANSWERS) and top[0][1] >= top[1][1]
    marvl = M3PHub.from_pretrained(str(tmp_path / "marvl" / "checkpoint_best.pt"), data_name_or_path=iglue_data["marvl"])
    store = RegionStore(os.path.join(iglue_data["marvl"], "regions", "test.id.json"))
    assert 0 <= marvl.reason("39-0", "39-n-0", "true anjing berlari", store=store) <= 1


def test_marvl_batches_read_each_image_once_and_xgqa_targets_follow_soft_labels(iglue_data):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    def task_of(name):
        args = options.parse_args_and_arch(options.get_training_parser(), [
            iglue_data[name], "--user-dir", "m3p_fairseq", "--task", f"m3p_{name}", "--criterion", "m3p_iglue", *TINY])
        cfg = convert_namespace_to_omegaconf(args)
        return tasks.setup_task(cfg.task), cfg

    task, cfg = task_of("marvl")
    task.load_dataset("valid.en")
    ds = task.dataset("valid.en")
    reads = []
    real = ds.regions.get_row
    ds.regions.get_row = lambda row: reads.append(row) or real(row)
    batch = ds.collater([ds[i] for i in range(3)])
    assert sorted(reads) == sorted(ds.image_rows[:3].reshape(-1).tolist())  # 6 images, each read once
    store = ds.regions.store
    for i in range(3):
        left, right = (store.image_ids[r] for r in ds.image_rows[i])
        assert (left, right) == (f"dev-{20 + i}-0-img0", f"dev-{20 + i}-0-img1")
        for k, image in ((0, left), (1, right)):  # rows 2i (statement + left), 2i+1 (statement + right)
            n = store.num_regions[store.index_of(image)]
            np.testing.assert_allclose(batch["net_input"]["regions"][2 * i + k, :n].numpy(),
                                       store.get(store.index_of(image))["features"], rtol=1e-3)
        assert torch.equal(batch["net_input"]["src_tokens"][2 * i], batch["net_input"]["src_tokens"][2 * i + 1])
    # the model: the pair head's logits are its classifier over the two passes' pooled vectors, side by side
    model = task.build_model(cfg.model).eval()
    net = batch["net_input"]
    logits = model(**net, classification_head_name="marvl")["classification"]
    head = model.classification_heads["marvl"]
    pooled = [head.pool(model(**{k: v[j:j + 1] for k, v in net.items()}, features_only=True)["features"])
              for j in range(6)]
    x = torch.cat([torch.cat(pooled[2 * i:2 * i + 2], dim=1) for i in range(3)])
    assert torch.allclose(logits, head.out_proj(head.layer_norm(F.gelu(head.hidden(x)))), atol=1e-4)

    task, _ = task_of("xgqa")
    task.load_dataset("train.en")
    ds = task.dataset("train.en")
    target = ds.collater([ds[i] for i in range(4)])["target"]
    assert target.shape == (4, len(F_.GQA_ANSWERS))
    assert torch.allclose(target[1], torch.tensor([0.3, 1.0, 0.0, 0.0]))  # {"yes": 1.0, "no": 0.3}
    assert target[2].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_new_heads_start_from_the_pretrained_pooler(iglue_data, xvnli_checkpoint):
    """--pretrained-checkpoint: a head the checkpoint lacks gets its pooler from the checkpoint's VLM head
    (volta's M3P starts from the pre-trained pooled_layer); a head it holds keeps its own."""
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    path = f"{xvnli_checkpoint}/checkpoint_best.pt"
    state = checkpoint_utils.load_checkpoint_to_cpu(path)["model"]
    for job, source in (("marvl", "vlm"), ("xvnli", "xvnli")):
        args = options.parse_args_and_arch(options.get_training_parser(), [
            iglue_data[job], "--user-dir", "m3p_fairseq", "--task", f"m3p_{job}", "--criterion", "m3p_iglue", *TINY,
            "--pretrained-checkpoint", path])
        cfg = convert_namespace_to_omegaconf(args)
        model = tasks.setup_task(cfg.task).build_model(cfg.model)
        assert torch.equal(model.classification_heads[job].dense.weight, state[f"classification_heads.{source}.dense.weight"])


def test_zero_shot_retrieval_ir_and_tr_per_language(iglue_data, xvnli_checkpoint, tmp_path):
    """xFlickr&CO as IGLUE scores it, from any understanding checkpoint (here the XVNLI one's VLM head)."""
    results = str(tmp_path / "r.json")
    out = downstream_eval("iglue", "xflickrco", iglue_data["xflickrco"], "--path",
                          f"{xvnli_checkpoint}/checkpoint_best.pt", "--langs", "en,de", "--results", results, "--cpu")
    assert "xflickrco de: IR R@1" in out
    doc = json.load(open(results))["iglue"]["xflickrco"]
    assert doc["chance_r1"] == 25.0 and doc["en"]["num_images"] == doc["en"]["num_captions"] == 4
    assert doc["avg"]["ir_r1"] == doc["de"]["ir_r1"] and doc["avg"]["langs"] == "de"


def test_finetune_xvnli_yaml_under_hydra(iglue_data, xvnli_checkpoint, tmp_path):
    """finetune_xvnli.yaml (IGLUE's M3P settings) runs under fairseq-hydra-train, validating on English dev."""
    res = _hydra("finetune_xvnli", tmp_path, f"task.data={iglue_data['xvnli']}",
                 f"task.pretrained_checkpoint={xvnli_checkpoint}/checkpoint_best.pt", "model=m3p_tiny",
                 "model.encoder_embed_dim=16", "model.encoder_ffn_embed_dim=32", "model.encoder_attention_heads=2",
                 "optimization.max_epoch=1", "optimization.update_freq=[1]", "dataset.batch_size=6",
                 "dataset.required_batch_size_multiple=1",
                 "lr_scheduler.total_num_update=5", "lr_scheduler.warmup_updates=1", "common.cpu=true",
                 f"checkpoint.save_dir={tmp_path / 'ck'}")
    assert _losses(res) and 'valid.en_accuracy' in res.stdout + res.stderr
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "ck" / "checkpoint_best.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 5  # one epoch of 30 pairs in batches of 6
    cfg = state["cfg"]
    assert cfg["optimizer"]["adam_eps"] == 1e-6 and cfg["optimizer"]["weight_decay"] == 1e-4
    assert cfg["checkpoint"]["best_checkpoint_metric"] == "accuracy" and cfg["dataset"]["valid_subset"] == "valid.en"
    assert cfg["optimization"]["lr"] == [2e-5] and cfg["common"]["seed"] == 0


def test_iglue_table_beside_levels_and_averages():
    from m3p_fairseq.errors import M3PInputError
    from m3p_fairseq.evaluation.tables import render

    doc = {"iglue": {"xgqa": {"en": {"acc": 53.75}, "de": {"acc": 33.42}, "avg": {"acc": 33.42, "langs": "de"},
                              "majority": 20.1, "majority_answer": "no", "majority_from": "train.en"},
                     "xflickrco": {"en": {"ir_r1": 31.35, "tr_r1": 24.6}, "chance_r1": 0.05}},
           "iglue_few_shot": {"xvnli": {"48": {"ar": {"acc": 60.0, "lr": 1e-4}}, "5": {"ar": {"acc": 55.0}}}}}
    text = render(doc, "iglue")
    assert "| accuracy | 53.8 | 33.4 | 33.4 |" in text and "Majority answer (no): 20.1." in text
    assert "| IR R@1 | 31.4 | - |" in text and "Chance level: R@1 0.05." in text
    assert text.index("**xGQA**") < text.index("**xFlickr&CO**")  # IGLUE's order
    assert text.index("| 5 shots accuracy") < text.index("| 48 shots accuracy")
    with pytest.raises(M3PInputError, match="iglue.xgqa.de"):
        render({"iglue": {"xgqa": {"de": 33.4}}}, "iglue")


def test_iglue_sh_finetune_selects_on_english_dev_and_tests(iglue_data, xvnli_checkpoint, tmp_path):
    """examples/m3p/iglue.sh TASK finetune: IGLUE's settings, validation on valid.en, checkpoint_best tested on English."""
    from .conftest import ROOT, run

    out = tmp_path / "out"
    run(["bash", os.path.join(ROOT, "examples", "m3p", "iglue.sh"), "xvnli", "finetune", iglue_data["xvnli"],
         f"{xvnli_checkpoint}/checkpoint_best.pt", str(out), *TINY[2:]],
        env={"ARCH": "m3p_tiny", "EPOCHS": "2", "BATCH": "6", "UPDATE_FREQ": "1", "DEVICE": "--cpu", "LOG_INTERVAL": "1"})
    log = (out / "xvnli.log").read_text()
    assert "valid on 'valid.en' subset" in log and "best_accuracy" in log and "adam_eps': 1e-06" in log
    assert extra_state(str(out / "xvnli" / "checkpoint_best.pt"))["val_loss"] is not None
    doc = json.load(open(out / "results.json"))["iglue"]["xvnli"]
    assert doc["en"]["n"] == 9 and doc["chance"] == 33.33
