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
    assert of_kind(UNDERSTANDING) == ["xmlm", "mmlm", "mrm", "vlm", "tlm", "tcl", "ret", "xnli", "xvnli", "xgqa", "marvl"]
    assert of_kind(GENERATION) == ["xdae", "ic", "dic", "ntg"]
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


# ---- the parallel-text objectives --------------------------------------------------------------------

def _tlm_batches(data, *flags):
    task, cfg = _task(data, "--arch", "m3p_tiny", "--objectives", "tlm", *flags)
    task.load_dataset("train")
    itr = task.get_batch_iterator(task.dataset("train"), max_sentences=32, seed=1).next_epoch_itr(shuffle=True)
    return task, list(itr)


def _tlm_rates(task, batches):
    """Masked share of each sentence's tokens, and checks of positions and languages per side."""
    pad = task.dictionary.pad()
    masked, total = [0, 0], [0, 0]
    for b in batches:
        net = b["net_input"]
        for tokens, positions, langs, target in zip(net["src_tokens"], net["src_positions"], net["src_lang"],
                                                    b["target"]):
            real = tokens.ne(pad)
            restart = torch.nonzero(positions[1:] == pad + 1).view(-1) + 1
            assert len(restart) == 1, "positions restart once, at the second sentence"
            cut, n = int(restart[0]), int(real.sum())
            assert torch.equal(positions[:cut], torch.arange(cut) + pad + 1)
            assert torch.equal(positions[cut:n], torch.arange(n - cut) + pad + 1)
            assert len(set(langs[:cut].tolist())) == 1 and len(set(langs[cut:n].tolist())) == 1
            assert langs[0] != langs[cut], "each side carries its own language"
            for side, (lo, hi) in enumerate(((0, cut), (cut, n))):
                masked[side] += int(target[lo:hi].ne(pad).sum())
                total[side] += hi - lo
    return [m / t for m, t in zip(masked, total)], total


def test_tlm_masks_both_sentences_and_restarts_positions(tiny_world):
    task, batches = _tlm_batches(tiny_world["data"])
    rates, total = _tlm_rates(task, batches)
    assert min(total) > 3000
    assert all(abs(r - 0.15) < 0.015 for r in rates), rates
    # the flag reaches the datasets fairseq-train builds
    task, batches = _tlm_batches(tiny_world["data"], "--mask-prob", "0.3")
    rates, _ = _tlm_rates(task, batches)
    assert all(abs(r - 0.30) < 0.02 for r in rates), rates


def test_tlm_samples_language_pairs_with_alpha(tiny_world):
    """Pairs drawn with p ∝ n^alpha over the language pairs, as xMLM draws languages."""
    from m3p_fairseq.data.multitask import alpha_sampling_probs

    for alpha in ("0.3", "1.0"):
        task, batches = _tlm_batches(tiny_world["data"], "--alpha", alpha)
        sizes = [len(task.load_translations(s, t, "train")[0]) for s, t in task.parallel_pairs()]
        want = alpha_sampling_probs(sizes, float(alpha))
        seen = {}
        for b in batches:
            for langs, positions in zip(b["net_input"]["src_lang"], b["net_input"]["src_positions"]):
                cut = int(torch.nonzero(positions[1:] == task.dictionary.pad() + 1).view(-1)[0]) + 1
                seen[int(langs[cut])] = seen.get(int(langs[cut]), 0) + 1
        n = sum(seen.values())
        got = [seen.get(task.lang_id(t), 0) / n for _, t in task.parallel_pairs()]
        assert max(abs(g - w) for g, w in zip(got, want)) < 0.01, (alpha, got, list(want))


def test_tcl_loss_is_infonce_over_translation_pairs(tiny_world):
    """The criterion's loss against a hand computation: sum over pairs of the two cross-entropies of
    exp(cos / T), positives on the diagonal, duplicates of a pair left out of the negatives."""
    task, cfg = _task(tiny_world["data"], "--arch", "m3p_tiny", "--objectives", "tcl", "--criterion", "m3p_pretrain")
    model = task.build_model(cfg.model).eval()
    criterion = task.build_criterion(cfg.criterion)
    task.load_dataset("train")
    itr = task.get_batch_iterator(task.dataset("train"), max_sentences=16, seed=1).next_epoch_itr(shuffle=True)
    batch = next(iter(itr))
    batch["pair_id"][1] = batch["pair_id"][0]  # a duplicate (resampling draws with replacement)
    with torch.no_grad():
        loss, n, log = criterion(model, batch)

        def emb(side):
            x, _ = model.encoder.extract_features(side["src_tokens"])
            h = model.classification_heads["tcl"](x)
            return h / h.norm(dim=-1, keepdim=True)

        a, b = emb(batch["net_input"]), emb(batch["other_view"])
        T, ids, want = criterion.tcl_temperature, batch["pair_id"].tolist(), 0.0
        for i in range(len(ids)):
            for sims in ((a[i] * b).sum(-1), (b[i] * a).sum(-1)):
                keep = [j for j in range(len(ids)) if j == i or ids[j] != ids[i]]
                want += -float(sims[i] / T) + math.log(sum(math.exp(float(sims[j] / T)) for j in keep))
        want /= 2
    assert n == len(ids) and float(loss) == pytest.approx(want, rel=1e-4)
    assert 0 <= int(log["tcl_ncorrect"]) <= n


# ---- retrieval fine-tuning as an objective (ret), beside the parallel-text ones ------------------------

def _ret_batch(data, *flags):
    task, cfg = _task(data, "--arch", "m3p_tiny", "--objectives", "ret,tcl", "--criterion", "m3p_pretrain", *flags)
    model = task.build_model(cfg.model).eval()
    task.load_dataset("train")
    ds = task.dataset("train")
    idx = ds.ordered_indices_of(ds.names.index("ret"))[:8]
    return task, cfg, model, ds.collater([ds[int(i)] for i in idx])


def test_ret_batches_get_the_retrieval_criterions_loss(tiny_world):
    """A ret batch under m3p_pretrain: the m3p_retrieval criterion's loss on the same batch (one loss, two
    criterions), its metrics under ret_; the retrieval options reach it (--contrastive-weight 0: the VLM
    term alone; --dual-dim 0: no dual encoder heads, no contrastive term)."""
    from m3p_fairseq.models.dual_encoder import has_dual_heads

    task, cfg, model, batch = _ret_batch(tiny_world["data"])
    assert batch["objective"] == "ret" and has_dual_heads(model) and "tcl" in model.classification_heads
    with torch.no_grad():
        loss, n, log = task.build_criterion(cfg.criterion)(model, batch)
        want, want_n, want_log = M3PRetrievalCriterion(task)(model, {k: v for k, v in batch.items() if k != "objective"})
        assert n == want_n == len(batch["vlm_target"]) and float(loss) == pytest.approx(float(want), rel=1e-6)
        assert log["ret_nce_n"] == want_log["nce_n"] and float(log["ret_vlm_loss"]) == pytest.approx(float(want_log["vlm_loss"]))
        assert log["ret_batches"] == 1 and log["tcl_batches"] == 0
        vlm_only, _, log0 = M3PPretrainCriterion(task, contrastive_weight=0.0)(model, batch)
        assert float(vlm_only) == pytest.approx(float(log["ret_vlm_loss"])) and float(vlm_only) < float(loss)
        assert "ret_nce_loss" not in log0
    task, cfg, model, batch = _ret_batch(tiny_world["data"], "--dual-dim", "0")
    assert not has_dual_heads(model)
    with torch.no_grad():
        loss, _, log = task.build_criterion(cfg.criterion)(model, batch)
    assert "ret_nce_loss" not in log and float(loss) == pytest.approx(float(log["ret_vlm_loss"]))
