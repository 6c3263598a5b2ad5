"""Checkpoints load with torch's weights_only protection on: fairseq's own load works, and a crafted
checkpoint (whose unpickling would create a file) is refused in one line by every command and API
that loads a checkpoint or weights file, without running its payload."""
import os
import pickle

import pytest
import torch

from m3p_fairseq.errors import M3PInputError

from .conftest import BIN, run


class _Evil:
    """Unpickling this would create a file: the kind of checkpoint that must be refused."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture
def evil(tmp_path):
    """(checkpoint path, the file its payload would create)."""
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / "evil.pt")
    torch.save({"model": {}, "args": _Evil(marker), "cfg": None}, path)
    return path, marker


def _refused_in_one_line(res, path, marker):
    assert res.returncode != 0, res.stderr[-2000:]
    assert not os.path.exists(marker), "the checkpoint's payload ran"
    last = res.stderr.strip().splitlines()[-1]
    assert path in last and "refuse" in last, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]


def test_fairseq_load_refuses_and_names_the_file(evil):
    from fairseq import checkpoint_utils

    path, marker = evil
    with pytest.raises(pickle.UnpicklingError) as e:  # what torch raises, as a one-line M3PInputError
        checkpoint_utils.load_checkpoint_to_cpu(path)
    assert not os.path.exists(marker)
    assert isinstance(e.value, M3PInputError)
    assert str(e.value).startswith(f"{path}: refused to load a checkpoint") and "\n" not in str(e.value)


def _train(data, save_dir, *argv, task="multitask_multimodal", criterion="m3p_pretrain"):
    return [os.path.join(BIN, "fairseq-train"), data, "--user-dir", "m3p_fairseq", "--task", task, "--arch",
            "m3p_tiny", "--criterion", criterion, "--cpu", "--batch-size", "4", "--max-update", "1",
            "--save-dir", save_dir, *argv]


@pytest.mark.parametrize("command", ["restore-file", "finetune-from-model", "pretrained-checkpoint", "generate",
                                     "retrieval-eval", "downstream-eval"])
def test_commands_refuse_a_checkpoint_that_would_run_code(command, evil, tiny_world, tmp_path):
    path, marker = evil
    data, save = tiny_world["data"], str(tmp_path / "ck")
    cmd = {
        "restore-file": _train(data, save, "--restore-file", path),
        "finetune-from-model": _train(data, save, "--finetune-from-model", path),
        "pretrained-checkpoint": _train(data, save, "--pretrained-checkpoint", path, task="m3p_retrieval",
                                        criterion="m3p_retrieval"),
        "generate": [os.path.join(BIN, "fairseq-generate"), data, "--user-dir", "m3p_fairseq", "--task",
                     "m3p_captioning", "--path", path, "--gen-subset", "test", "--cpu"],
        "retrieval-eval": [os.path.join(BIN, "m3p-retrieval-eval"), data, "--path", path, "--cpu"],
        "downstream-eval": [os.path.join(BIN, "m3p-downstream-eval"), "retrieval", data, "--path", path, "--cpu"],
    }[command]
    _refused_in_one_line(run(cmd, check=False), path, marker)
    assert not os.path.exists(os.path.join(save, "checkpoint_last.pt"))


def test_hub_and_model_classes_refuse(evil, tiny_world):
    from m3p_fairseq import M3PHub
    from m3p_fairseq.models.m3p import M3PModel
    from m3p_fairseq.models.m3p_seq2seq import M3PSeq2SeqModel

    path, marker = evil
    for load in (M3PHub.from_pretrained, M3PModel.from_pretrained, M3PSeq2SeqModel.from_pretrained):
        with pytest.raises(M3PInputError) as e:
            load(path, data_name_or_path=tiny_world["data"])
        assert str(e.value).startswith(f"{path}: refused to load a checkpoint") and "\n" not in str(e.value)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("importer", ["xlmr", "xlmr-hf", "m3p"])
def test_importers_refuse_without_trust_checkpoint(importer, tmp_path):
    from preprocess import import_m3p, import_xlmr

    marker = str(tmp_path / "pwned")
    src = tmp_path / "src"
    src.mkdir()
    weights = {"xlmr": "model.pt", "xlmr-hf": "pytorch_model.bin", "m3p": "release.pth"}[importer]
    torch.save({"model": _Evil(marker)}, str(src / weights))
    (src / "dict.txt").write_text("a 1\n")
    if importer == "xlmr-hf":  # HuggingFace's layout: a config and the sentencepiece model beside the weights
        (src / "config.json").write_text('{"model_type": "xlm-roberta", "hidden_size": 8, "num_hidden_layers": 1, '
                                         '"num_attention_heads": 2, "intermediate_size": 16}')
        (src / "sentencepiece.bpe.model").write_text("")
    if importer == "m3p":
        main, argv = import_m3p.main, [str(src / weights), str(tmp_path / "out"), "--spm", str(src / "dict.txt")]
    else:
        main, argv = import_xlmr.main, [str(src), str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        main(argv)
    message = str(e.value.code)
    assert "\n" not in message and str(src / weights) in message and "--trust-checkpoint" in message, message
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "out")


def test_fairseq_checkpoints_load_with_weights_only(tmp_path):
    """argparse / omegaconf / numpy objects in a fairseq checkpoint are on the allowlist."""
    import argparse

    import numpy as np
    from omegaconf import OmegaConf

    import m3p_fairseq  # noqa: F401

    state = {"args": argparse.Namespace(arch="m3p_tiny", lr=[0.1]),
             "cfg": OmegaConf.create({"model": {"arch": "m3p_tiny"}, "common": {"seed": 1}}),
             "model": {"w": torch.zeros(2)}, "extra_state": {"rng": np.random.RandomState(0).get_state()[1][:4],
                                                             "val": np.float64(1.5)}}
    path = str(tmp_path / "ok.pt")
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["args"].arch == "m3p_tiny" and loaded["cfg"]["common"]["seed"] == 1
