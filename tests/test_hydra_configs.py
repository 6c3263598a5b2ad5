"""examples/m3p/config through fairseq-hydra-train: the same per-update losses as the flag form of the
same run (fairseq-train), the plugin's defaults merged, overrides of fields the YAML leaves out."""
import json
import os

import pytest

from .conftest import BIN, ROOT, run

CONFIG_DIR = os.path.join(ROOT, "examples", "m3p", "config")
# a few updates of each run, logged one by one (json), in both forms
SHORT = {"max_update": 12, "log_interval": 1}


def _hydra(config, cwd, *overrides):
    return run([os.path.join(BIN, "fairseq-hydra-train"), "--config-dir", CONFIG_DIR, "--config-name", config,
                "common.log_format=json", f"common.log_interval={SHORT['log_interval']}", "dataset.num_workers=0",
                *overrides], cwd=str(cwd))


def _flags(data, cwd, *flags):
    return run([os.path.join(BIN, "fairseq-train"), data, "--user-dir", "m3p_fairseq", "--log-format", "json",
                "--log-interval", str(SHORT["log_interval"]), "--num-workers", "0", *flags], cwd=str(cwd))


def _losses(res):
    """(update, loss) of every train_inner record, as logged (the same strings in both forms)."""
    recs = [json.loads(line[line.index("{"):]) for line in (res.stdout + res.stderr).splitlines()
            if "train_inner" in line and "{" in line]
    return [(r["num_updates"], r["loss"]) for r in recs]


def _checkpoint_cfg(path):
    from fairseq import checkpoint_utils

    return checkpoint_utils.load_checkpoint_to_cpu(path)["cfg"]


@pytest.fixture(scope="module")
def pretrained_both_ways(tiny_world, tmp_path_factory):
    """The demo's tiny pre-training (pretrain_tiny.yaml / demo.sh's flags), 12 updates each way."""
    n = SHORT["max_update"]
    yaml_dir, flag_dir = tmp_path_factory.mktemp("hydra"), tmp_path_factory.mktemp("flags")
    by_yaml = _hydra("pretrain_tiny", yaml_dir, f"task.data={tiny_world['data']}", f"optimization.max_update={n}",
                     f"lr_scheduler.total_num_update={n}", "lr_scheduler.warmup_updates=4",
                     f"checkpoint.save_dir={yaml_dir / 'ck'}")
    # demo.sh step 3, with the same short schedule
    by_flags = _flags(tiny_world["data"], flag_dir,
                      "--task", "multitask_multimodal", "--arch", "m3p_tiny", "--criterion", "m3p_pretrain",
                      "--objectives", "xmlm,mmlm,mrm,vlm", "--objective-ratios", "1,3,1,3", "--caption-langs", "en",
                      "--sample-break-mode", "eos", "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "1e-3",
                      "--clip-norm", "1.0", "--lr-scheduler", "polynomial_decay", "--warmup-updates", "4",
                      "--total-num-update", str(n), "--max-update", str(n), "--batch-size", "64", "--cpu",
                      "--region-cache-mb", "1024", "--seed", "1", "--save-dir", str(flag_dir / "ck"),
                      "--no-epoch-checkpoints", "--disable-validation")
    return {"yaml": by_yaml, "flags": by_flags, "checkpoint": str(yaml_dir / "ck" / "checkpoint_last.pt")}


def test_pretrain_tiny_same_losses_as_flags(pretrained_both_ways):
    by_yaml, by_flags = _losses(pretrained_both_ways["yaml"]), _losses(pretrained_both_ways["flags"])
    assert len(by_yaml) == SHORT["max_update"], pretrained_both_ways["yaml"].stdout[-2000:]
    assert by_yaml == by_flags
    # the run saves the whole config: the plugin's task defaults merged, the YAML's values kept
    cfg = _checkpoint_cfg(pretrained_both_ways["checkpoint"])
    assert cfg["task"]["_name"] == "multitask_multimodal" and cfg["task"]["alpha"] == 0.3
    assert cfg["task"]["objective_ratios"] == "1,3,1,3" and cfg["criterion"]["_name"] == "m3p_pretrain"
    assert cfg["model"]["encoder_embed_dim"] == 128 and cfg["common"]["user_dir"] == "m3p_fairseq"


def _finetune_both_ways(data, tmp_path, config, yaml_overrides, flags, n=8):
    """A finetune_* config and its flag form, each ``n`` updates of the shared short optimizer settings
    (the paper's Adam and schedule, a list override of lr, model=m3p_tiny as a group override); both
    must log the same losses. Returns the YAML run's saved config and output."""
    yaml_dir, flag_dir = tmp_path / "yaml", tmp_path / "flags"
    yaml_dir.mkdir()
    flag_dir.mkdir()
    by_yaml = _hydra(config, yaml_dir, f"task.data={data}", *yaml_overrides, "model=m3p_tiny",
                     "optimization.lr=[1e-3]", f"optimization.max_update={n}", f"lr_scheduler.total_num_update={n}",
                     "lr_scheduler.warmup_updates=2", "optimization.update_freq=[1]", "dataset.batch_size=8",
                     "common.cpu=true", f"checkpoint.save_dir={yaml_dir / 'ck'}")
    by_flags = _flags(data, flag_dir, *flags, "--arch", "m3p_tiny", "--caption-langs", "en", "--num-negatives", "3",
                      "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "1e-3", "--clip-norm", "1.0",
                      "--lr-scheduler", "polynomial_decay", "--warmup-updates", "2", "--total-num-update", str(n),
                      "--max-update", str(n), "--batch-size", "8", "--update-freq", "1", "--cpu",
                      "--data-buffer-size", "0", "--seed", "1", "--save-dir", str(flag_dir / "ck"),
                      "--no-epoch-checkpoints", "--disable-validation")
    assert len(_losses(by_yaml)) == n
    assert _losses(by_yaml) == _losses(by_flags)
    return _checkpoint_cfg(str(yaml_dir / "ck" / "checkpoint_last.pt")), by_yaml.stdout + by_yaml.stderr


def test_finetune_retrieval_same_losses_as_flags(tiny_world, pretrained_both_ways, tmp_path):
    """finetune_retrieval.yaml (3 negatives, the paper's optimizer) against retrieval.sh's flags, from
    the pre-trained checkpoint above; a group override (model=m3p_tiny) and a list override (lr)."""
    ckpt = pretrained_both_ways["checkpoint"]
    cfg, _ = _finetune_both_ways(tiny_world["data"], tmp_path, "finetune_retrieval", [f"task.pretrained_checkpoint={ckpt}"],
                                 ["--task", "m3p_retrieval", "--criterion", "m3p_retrieval", "--pretrained-checkpoint", ckpt])
    assert cfg["task"]["num_negatives"] == 3 and cfg["optimizer"]["adam_betas"] == "(0.9,0.98)"


def test_finetune_retrieval_tcl_same_losses_as_flags(tiny_world, pretrained_both_ways, tmp_path):
    """finetune_retrieval_tcl.yaml (ret and TCL at 1:1, --finetune-from-model) against retrieval.sh's
    finetune_en flags with KEEP_OBJECTIVES=tcl: the same losses update for update, both objectives trained."""
    ckpt = pretrained_both_ways["checkpoint"]
    cfg, log = _finetune_both_ways(tiny_world["data"], tmp_path, "finetune_retrieval_tcl",
                                   [f"checkpoint.finetune_from_model={ckpt}"],
                                   ["--task", "multitask_multimodal", "--criterion", "m3p_pretrain", "--objectives",
                                    "ret,tcl", "--objective-ratios", "1,1", "--sample-break-mode", "eos",
                                    "--finetune-from-model", ckpt])
    assert cfg["task"]["objectives"] == "ret,tcl" and cfg["task"]["num_negatives"] == 3
    assert "ret_batches" in log and "tcl_batches" in log


def test_generation_pretraining_same_losses_as_flags(tiny_world, tmp_path):
    """pretrain_generation_tiny.yaml against demo.sh step 5's flags: the generation model (a legacy
    fairseq Transformer underneath) trains and saves through its Hydra model node."""
    n, yaml_dir, flag_dir = 6, tmp_path / "yaml", tmp_path / "flags"
    yaml_dir.mkdir()
    flag_dir.mkdir()
    by_yaml = _hydra("pretrain_generation_tiny", yaml_dir, f"task.data={tiny_world['data']}",
                     f"optimization.max_update={n}", "lr_scheduler.warmup_updates=2", "dataset.batch_size=16",
                     f"checkpoint.save_dir={yaml_dir / 'ck'}")
    by_flags = _flags(tiny_world["data"], flag_dir,
                      "--task", "multitask_multimodal", "--arch", "m3p_seq2seq_tiny", "--criterion", "m3p_generation",
                      "--objectives", "xdae,ic,dic", "--objective-ratios", "1,4,1", "--caption-langs",
                      "en,de,fr,cs,ja,zh", "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "3e-3",
                      "--clip-norm", "1.0", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "2",
                      "--max-update", str(n), "--batch-size", "16", "--cpu", "--data-buffer-size", "0",
                      "--region-cache-mb", "1024", "--seed", "1", "--save-dir", str(flag_dir / "ck"),
                      "--no-epoch-checkpoints", "--disable-validation")
    assert len(_losses(by_yaml)) == n
    assert _losses(by_yaml) == _losses(by_flags)
    assert (yaml_dir / "ck" / "checkpoint_last.pt").exists()


def _compose(name, overrides):
    """What fairseq-hydra-train composes for ``--config-name name overrides`` (in this process: the
    plugin is imported already, so the Hydra plugin's architecture nodes are all it would add)."""
    from fairseq.dataclass.initialize import hydra_init
    from hydra import compose, initialize_config_dir

    from hydra_plugins.fairseq_user_dir import register_legacy_architectures

    register_legacy_architectures("m3p_fairseq")
    hydra_init(name)
    # version_base 1.1, as fairseq-hydra-train runs: a newer one would stick to the process and fairseq's
    # own hydra.experimental calls (checkpoint loading) would refuse to run in the tests that follow
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.1"):
        return compose(config_name=name, overrides=overrides)


def test_every_config_composes_and_checks_keys():
    """Each config composes with its required values given; a misspelt plugin field fails at once,
    naming the key (the plugin's dataclasses are the schema)."""
    from hydra.errors import ConfigCompositionException

    names = sorted(f[:-len(".yaml")] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml") and not f.startswith("_"))
    assert {"pretrain_base", "pretrain_tiny", "pretrain_generation", "finetune_retrieval", "finetune_mild",
            "finetune_captioning", "finetune_mmt", "finetune_xnli", "finetune_ntg"} <= set(names)
    for name in names:
        cfg = _compose(name, ["task.data=D"])
        assert cfg.common.user_dir == "m3p_fairseq", name
        for group in ("task", "model", "criterion", "optimizer", "lr_scheduler"):
            assert cfg[group]["_name"], (name, group)
        assert cfg.task.seed == cfg.common.seed  # the plugin's dataclass interpolations resolve
    assert _compose("finetune_retrieval", ["task.data=D"]).task.num_negatives == 3
    assert _compose("pretrain_base", ["task.data=D"]).optimization.lr == [1e-4]
    assert _compose("pretrain_base", ["task.data=D", "model.encoder_layers=6"]).model.encoder_layers == 6
    with pytest.raises(ConfigCompositionException, match="alpah"):
        _compose("pretrain_base", ["task.data=D", "task.alpah=0.5"])
