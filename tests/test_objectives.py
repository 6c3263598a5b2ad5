"""The objective registry, and what it fixed: one list of objectives for task, criterions and plots, a random
stream per objective, losses in one unit, no host syncs in the criterions, a chance level per language."""
import json
import math

import pytest
import torch
from fairseq import metrics, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from m3p_fairseq.checkpoints import GENERATION, UNDERSTANDING
from m3p_fairseq.criterions.m3p_downstream import M3PRetrievalCriterion
from m3p_fairseq.criterions.m3p_generation import M3PGenerationCriterion
from m3p_fairseq.criterions.m3p_pretrain import M3PPretrainCriterion
from m3p_fairseq.evaluation.plots import plot_keys
from m3p_fairseq.objectives import OBJECTIVES, of_kind, stream_seed


def _task(data, *flags):
    args = options.parse_args_and_arch(options.get_training_parser(), [
        data, "--task", "multitask_multimodal", "--cpu", "--seed", "5", *flags])
    cfg = convert_namespace_to_omegaconf(args)
    return tasks.setup_task(cfg.task), cfg


def _items(task, name, n=12):
    """The first n items of objective ``name`` in the train dataset the task built."""
    ds = task.dataset("train")
    k = ds.names.index(name)
    return [ds.datasets[k][i] for i in range(n)]


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if torch.is_tensor(a):
        return torch.equal(a, b)
    return a == b


def test_the_registry_is_the_one_list():
    assert of_kind(UNDERSTANDING) == ["xmlm", "mmlm", "mrm", "vlm"]
    assert of_kind(GENERATION) == ["xdae", "ic", "dic"]
    assert set(plot_keys()) >= {"xmlm_loss", "vlm_acc", "mrm_mse", "xdae_loss", "dic_loss"}
    for name, spec in OBJECTIVES.items():
        assert spec.name == name and spec.plot_keys and all(k.startswith(name) for k in spec.plot_keys)
    # the seeds of two objectives differ, and none is the bare --seed
    seeds = {stream_seed(1, n) for n in OBJECTIVES}
    assert len(seeds) == len(OBJECTIVES) and 1 not in seeds


def test_each_objective_draws_from_its_own_stream(tiny_world):
    """Before: objective k drew from --seed + 1000 k (and xMLM's masking from the bare --seed), so adding or
    reordering objectives changed the others' masks and negatives."""
    data = tiny_world["data"]
    a, _ = _task(data, "--arch", "m3p_tiny", "--objectives", "xmlm,mmlm,vlm")
    b, _ = _task(data, "--arch", "m3p_tiny", "--objectives", "vlm,xmlm")
    for t in (a, b):
        t.load_dataset("train")
    for name in ("vlm", "xmlm"):
        assert all(_same(x, y) for x, y in zip(_items(a, name), _items(b, name))), name
    # and a different --seed moves them
    c, _ = _task(data, "--arch", "m3p_tiny", "--objectives", "vlm,xmlm", "--seed", "6")
    c.load_dataset("train")
    assert not all(_same(x, y) for x, y in zip(_items(b, "xmlm"), _items(c, "xmlm")))


@pytest.fixture(scope="module")
def batches(tiny_world):
    """One batch per understanding objective, through the task's own datasets, and a tiny model."""
    task, cfg = _task(tiny_world["data"], "--arch", "m3p_tiny", "--objectives", "xmlm,mmlm,mrm,vlm",
                      "--criterion", "m3p_pretrain")
    model = task.build_model(cfg.model)
    task.load_dataset("train")
    ds = task.dataset("train")
    out = {}
    for k, name in enumerate(ds.names):
        idx = ds.ordered_indices_of(k)[:8]
        out[name] = ds.collater([ds[int(i)] for i in idx])
    return task, model, out


def test_criterion_counts_stay_on_the_device(batches):
    """Before: int(mask.sum()) per batch, a host sync on a GPU; now the counts are tensors until fairseq reduces."""
    task, model, out = batches
    criterion = M3PPretrainCriterion(task)
    for name, batch in out.items():
        loss, sample_size, log = criterion(model, batch)
        assert torch.isfinite(loss)
        # (a count read off a shape, as the number of VLM pairs, needs no sync)
        counts = {k: v for k, v in log.items() if k.endswith(("_n", "_ncorrect")) and k != "vlm_n"}
        assert counts and all(torch.is_tensor(v) for v in counts.values()), (name, counts)


def test_every_cross_entropy_is_logged_in_bits(batches):
    """Before: loss / xmlm_loss in bits beside vlm_loss, mrm_ce and nce_loss in nats, in one log line."""
    task, model, out = batches
    criterion = M3PPretrainCriterion(task)
    logs = {name: criterion(model, batch)[2] for name, batch in out.items()}
    with metrics.aggregate() as agg:
        M3PPretrainCriterion.reduce_metrics(list(logs.values()))
    got = agg.get_smoothed_values()
    for key, summed, n in (("vlm_loss", logs["vlm"]["vlm_loss"], logs["vlm"]["vlm_n"]),
                           ("mrm_ce", logs["mrm"]["mrm_ce"], logs["mrm"]["mrm_n"]),
                           ("xmlm_loss", logs["xmlm"]["xmlm_loss"], logs["xmlm"]["xmlm_n"])):
        assert got[key] == pytest.approx(float(summed) / float(n) / math.log(2), abs=2e-3), key
    with metrics.aggregate() as agg:
        M3PRetrievalCriterion.reduce_metrics([{"loss": 2 * math.log(2), "sample_size": 2, "vlm_loss": 2 * math.log(2),
                                               "vlm_n": 2, "vlm_ncorrect": 1, "nce_loss": math.log(2), "nce_n": 1,
                                               "nce_ncorrect": 1}])
    got = agg.get_smoothed_values()
    assert got["vlm_loss"] == pytest.approx(1.0) and got["nce_loss"] == pytest.approx(1.0) \
        and got["loss"] == pytest.approx(1.0)


def test_a_batch_of_another_kind_is_refused(batches):
    task, model, out = batches
    with pytest.raises(ValueError, match="m3p_generation got a 'vlm' batch"):
        M3PGenerationCriterion(task)(model, out["vlm"])
    with pytest.raises(ValueError, match="m3p_pretrain got a 'xdae' batch"):
        M3PPretrainCriterion(task)(model, dict(out["vlm"], objective="xdae"))


def test_chance_level_per_language(tmp_path):
    """Before: the section's chance_mR was the last language's, whatever the others' test sets were."""
    from m3p_fairseq.evaluation.downstream_cli import save_metrics

    path = str(tmp_path / "r.json")
    save_metrics(path, "retrieval.finetune_en", {"en": {"mR": 50.0, "chance_mR": 5.0},
                                                 "de": {"mR": 20.0, "chance_mR": 9.0}})
    doc = json.load(open(path))["retrieval"]
    assert doc["finetune_en"]["en"]["chance_mR"] == 5.0 and doc["finetune_en"]["de"]["chance_mR"] == 9.0
    assert "chance_mR" not in doc  # no single chance line when the languages' test sets differ
    save_metrics(path, "retrieval.zero_shot", {"en": {"mR": 10.0, "chance_mR": 5.0},
                                               "fr": {"mR": 9.0, "chance_mR": 5.0}})
    assert json.load(open(path))["retrieval"]["chance_mR"] == 5.0
