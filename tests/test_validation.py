"""Validation reports each task's own metric: zero-shot retrieval mR per language in pre-training (equal to
m3p-retrieval-eval's on the same checkpoint and images, summable across workers), BLEU-4 of generation
tasks (equal to fairseq-generate + m3p-caption-score), checkpoint_best.pt chosen by it, and training
unchanged by validation. Training runs in this process through fairseq_cli's own ``main``."""
import ast
import json
import logging
import os

import numpy as np
import pytest
import torch

from .conftest import ROOT
from .test_downstream_tasks import downstream_eval
from .test_end_to_end import _tensorboard_scalars


def _train(caplog, data, save_dir, *argv, updates):
    """fairseq-train's main in this process; returns {"train_inner": [...], "valid": [...]} of its json records."""
    from fairseq import checkpoint_utils, options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import train

    if hasattr(checkpoint_utils.save_checkpoint, "best"):  # fairseq keeps the best across runs of one process
        del checkpoint_utils.save_checkpoint.best
    args = options.parse_args_and_arch(options.get_training_parser(), [
        data, "--user-dir", "m3p_fairseq", "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--clip-norm", "1.0",
        "--max-update", str(updates), "--cpu", "--num-workers", "0", "--data-buffer-size", "0", "--seed", "1",
        "--save-dir", save_dir, "--no-epoch-checkpoints", "--log-format", "json", "--log-interval", "1", *argv])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train.main(convert_namespace_to_omegaconf(args))
    # fairseq keeps its tensorboard writers (one per tag) until the process exits: closed here, this run's event
    # files are whole when a test reads them, and a later run in this process opens writers of its own
    from fairseq.logging import progress_bar

    progress_bar._close_writers()
    progress_bar._tensorboard_writers.clear()
    records = {"train_inner": [], "valid": [], "save_dir": save_dir}
    lines = []
    for r in caplog.records:
        if r.name in ("train_inner", "valid"):
            records[r.name].append(json.loads(r.getMessage()))
            lines.append(f"2026-01-01 00:00:00 | INFO | {r.name} | {r.getMessage()}\n")
    with open(os.path.join(save_dir, "train.log"), "w") as f:  # what fairseq-train prints, for m3p-plots
        f.writelines(lines)
    return records


def _best_updates(save_dir):
    state = torch.load(os.path.join(save_dir, "checkpoint_best.pt"), map_location="cpu", weights_only=False)
    return state["optimizer_history"][-1]["num_updates"], state["extra_state"]["best"]


PRETRAIN = ["--task", "multitask_multimodal", "--arch", "m3p_tiny", "--criterion", "m3p_pretrain",
            "--objectives", "mmlm,vlm,tlm,tcl", "--sample-break-mode", "eos", "--lr", "2e-3", "--batch-size", "16"]
LANGS, IMAGES = ("en", "de"), 20


@pytest.fixture(scope="module")
def pretrained(tiny_world, tmp_path_factory, caplog_module):
    """Pre-training validated every 2 updates by zero-shot mR (en, de; the first 20 valid images), and the same
    run without validation."""
    save = str(tmp_path_factory.mktemp("val_on"))
    on = _train(caplog_module, tiny_world["data"], save, *PRETRAIN, "--validate-interval-updates", "2",
                "--save-interval-updates", "2", "--valid-retrieval-langs", ",".join(LANGS),
                "--valid-retrieval-images", str(IMAGES), "--best-checkpoint-metric", "mR",
                "--maximize-best-checkpoint-metric", "--tensorboard-logdir", os.path.join(save, "tb"), updates=12)
    off = _train(caplog_module, tiny_world["data"], str(tmp_path_factory.mktemp("val_off")), *PRETRAIN,
                 "--disable-validation", updates=12)
    return save, on, off


@pytest.fixture(scope="module")
def caplog_module():
    """A log capture that lives as long as the module (pytest's caplog is per test)."""
    import contextlib

    from _pytest.logging import LogCaptureHandler

    handler, root = LogCaptureHandler(), logging.getLogger()
    root.addHandler(handler)

    class Capture:
        records = property(lambda self: handler.records)
        clear = staticmethod(handler.reset)

        @staticmethod
        @contextlib.contextmanager
        def at_level(level):
            old = root.level
            root.setLevel(level)
            try:
                yield
            finally:
                root.setLevel(old)

    yield Capture()
    root.removeHandler(handler)


def test_validation_does_not_change_training(pretrained):
    save, on, off = pretrained
    losses = [[(r["num_updates"], r["loss"]) for r in run["train_inner"]] for run in (on, off)]
    assert len(losses[0]) == 12 and losses[0] == losses[1]
    assert len(on["valid"]) == 6 and not off["valid"]
    weights = [torch.load(os.path.join(d, "checkpoint_last.pt"), map_location="cpu", weights_only=False)["model"]
               for d in (save, off["save_dir"])]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_pretraining_validation_reports_zero_shot_recall_and_every_objective(pretrained):
    save, on, _ = pretrained
    last = on["valid"][-1]
    for key in ("valid_mR", "valid_mR_en", "valid_mR_de", "valid_mmlm_acc", "valid_vlm_acc", "valid_tlm_acc",
                "valid_tcl_acc", "valid_tcl_loss"):
        assert key in last, sorted(last)
    assert float(last["valid_mR"]) == pytest.approx((float(last["valid_mR_en"]) + float(last["valid_mR_de"])) / 2,
                                                    abs=0.011)
    tb = _tensorboard_scalars(os.path.join(save, "tb", "valid"))
    assert [s for s, _ in tb["mR_de"]] == [2, 4, 6, 8, 10, 12] and "tlm_acc" in tb
    assert np.allclose([v for _, v in tb["mR_de"]], [float(r["valid_mR_de"]) for r in on["valid"]], atol=1e-3)


def test_validation_recall_equals_the_retrieval_command(pretrained, tiny_world, tmp_path):
    """The last validation saw checkpoint_last.pt's weights: m3p-retrieval-eval on the same images agrees."""
    save, on, _ = pretrained
    results = str(tmp_path / "r.json")
    downstream_eval("retrieval", tiny_world["data"], "--path", os.path.join(save, "checkpoint_last.pt"), "--split",
                    "valid", "--langs", ",".join(LANGS), "--max-images", str(IMAGES), "--results", results, "--cpu")
    cli = json.load(open(results))["retrieval"]["finetuned"]
    last = on["valid"][-1]
    for lang in LANGS:
        assert cli[lang]["num_images"] == IMAGES
        assert float(last[f"valid_mR_{lang}"]) == pytest.approx(cli[lang]["mR"], abs=0.006), lang
    # the scores are not all alike (a collapsed model would make any ranking agree)
    assert len({round(cli[lang]["mR"], 2) for lang in LANGS} | {float(r["valid_mR"]) for r in on["valid"]}) > 1


def _validations(run):
    """(updates, mR, loss) of a run's validations."""
    return ([int(r["valid_num_updates"]) for r in run["valid"]], [float(r["valid_mR"]) for r in run["valid"]],
            [float(r["valid_loss"]) for r in run["valid"]])


def test_best_checkpoint_follows_the_metric_where_the_loss_disagrees(pretrained, tiny_world, caplog_module, tmp_path):
    """checkpoint_best.pt is the best by --best-checkpoint-metric in its direction, not by the loss: the pre-training
    run (mR maximised) keeps its best-mR checkpoint, the same run keeping the lowest mR (fairseq's default
    direction) keeps its lowest-mR one, and one of the two keeps another checkpoint than the loss would (the
    lowest loss can be the highest and the lowest mR at once only where mR never moves)."""
    save, on, _ = pretrained
    updates, m_r, loss = _validations(on)
    best_by_metric = updates[max(range(len(m_r)), key=lambda i: (m_r[i], i))]  # fairseq: a tie goes to the later
    assert _best_updates(save) == (best_by_metric, max(m_r))
    low_save = str(tmp_path / "lowest")
    low = _train(caplog_module, tiny_world["data"], low_save, *PRETRAIN, "--validate-interval-updates", "2",
                 "--save-interval-updates", "2", "--valid-retrieval-langs", ",".join(LANGS),
                 "--valid-retrieval-images", str(IMAGES), "--best-checkpoint-metric", "mR", updates=12)
    low_updates, low_m_r, low_loss = _validations(low)
    assert (low_updates, low_m_r, low_loss) == (updates, m_r, loss)  # the same run: only the kept checkpoint differs
    best_low = low_updates[max(range(len(low_m_r)), key=lambda i: (-low_m_r[i], i))]
    assert _best_updates(low_save) == (best_low, min(low_m_r))
    by_loss = updates[int(np.argmin(loss))]
    assert len(set(m_r)) > 1 and by_loss in updates and {best_by_metric, best_low} != {by_loss}, (m_r, loss)
    # m3p-plots draws the validation curves (mR per language) from the log
    from m3p_fairseq.evaluation.plots import main as plots_main, parse_log

    series = parse_log(os.path.join(save, "train.log"))
    assert [s for s, _ in series["valid"]["mR_en"]] == updates
    plots_main(["--train-log", os.path.join(save, "train.log"), "--out", str(tmp_path)])
    assert os.path.getsize(tmp_path / "train_valid.png") > 5000 and os.path.exists(tmp_path / "train_losses.png")


def test_query_batches_add_up_across_workers(tiny_world, task_factory):
    """Two workers' shares of the query batches, their logging outputs summed as fairseq sums them: the recall of
    one worker, which is recall_at_k over every pair."""
    from fairseq import metrics

    from m3p_fairseq.criterions.m3p_pretrain import M3PPretrainCriterion
    from m3p_fairseq.evaluation.retrieval import recall_at_k, retrieval_subset, score_pairs

    task, model = task_factory("--task", "multitask_multimodal", "--objectives", "vlm", "--valid-retrieval-langs",
                               "en,de", "--valid-retrieval-images", "9")
    with torch.no_grad():  # weights that make the scores depend on the text too (at init they barely do)
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    task.load_dataset("valid")
    dataset = task.dataset("valid")

    def recall(num_shards):
        task.begin_valid_epoch(1, model)
        logs = []
        for shard in range(num_shards):
            itr = task.get_batch_iterator(dataset, max_sentences=5, num_shards=num_shards, shard_id=shard)
            for sample in itr.next_epoch_itr(shuffle=False):
                if "retrieval_queries" in sample:
                    logs.append(task.valid_step(sample, model, None)[2])
        summed = {k: sum(log[k] for log in logs) for k in logs[0]}
        with metrics.aggregate(new_root=True) as agg:
            task.reduce_metrics([summed], M3PPretrainCriterion(task))
        return agg.get_smoothed_values()

    one, two = recall(1), recall(2)
    directions_differ = False
    for lang in ("en", "de"):
        s = retrieval_subset(task, lang, "valid", 9)
        _, scores = score_pairs(model, s.captions, s.images, task.source_dictionary.pad())
        full = recall_at_k(scores.reshape(len(s.images), len(s.captions)), s.caption_image)
        directions_differ |= any(full[f"i2t_r{k}"] != full[f"t2i_r{k}"] for k in (1, 5))
        assert one[f"mR_{lang}"] == two[f"mR_{lang}"] == pytest.approx(full["mR"], abs=0.006), lang
    assert directions_differ  # not a ranking any scorer would give (one direction counted twice would not pass)


@pytest.fixture
def task_factory(tiny_world):
    def make(*argv):
        from fairseq import options, tasks
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf

        args = options.parse_args_and_arch(options.get_training_parser(), [
            tiny_world["data"], "--arch", "m3p_tiny", "--criterion", "m3p_pretrain", "--cpu", *argv])
        cfg = convert_namespace_to_omegaconf(args)
        task = tasks.setup_task(cfg.task)
        torch.manual_seed(1)
        return task, task.build_model(cfg.model).eval()
    return make


def test_imports_follow_the_house_direction():
    """The models do not import the hub (it registers from_pretrained's loader), the weight importers read the
    dictionary without a task."""
    def imports(path):
        tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
        return {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
               {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    assert not any("hub" in m for m in imports("m3p_fairseq/models/m3p.py"))
    assert not any("tasks" in m for m in imports("preprocess/weights.py"))


def test_bad_validation_flags(tiny_world):
    """Validation flags that cannot work stop before training, in one line naming the flag."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from m3p_fairseq.errors import M3PDataError, M3PInputError

    def task(*argv):
        args = options.parse_args_and_arch(options.get_training_parser(), [tiny_world["data"], "--cpu", *argv])
        return tasks.setup_task(convert_namespace_to_omegaconf(args).task)

    with pytest.raises(M3PDataError, match="--valid-retrieval-langs en: retrieval is scored by the understanding"):
        task("--task", "multitask_multimodal", "--objectives", "xdae,ic", "--arch", "m3p_seq2seq_tiny", "--criterion",
             "m3p_generation", "--valid-retrieval-langs", "en").load_dataset("valid")
    with pytest.raises(M3PInputError, match="--valid-retrieval-images -1: must be >= 0"):
        task("--task", "m3p_retrieval", "--arch", "m3p_tiny", "--criterion", "m3p_retrieval",
             "--valid-retrieval-images", "-1").load_dataset("valid")
    with pytest.raises(M3PInputError, match="--eval-bleu-args '{\"beem\": 2}'"):
        task("--task", "m3p_ntg", "--arch", "m3p_seq2seq_tiny", "--criterion", "m3p_generation", "--eval-bleu",
             "--eval-bleu-args", '{"beem": 2}').dev_metric
