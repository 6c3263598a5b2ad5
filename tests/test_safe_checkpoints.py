"""Checkpoints load with torch's weights_only protection on: fairseq's own load, and a crafted one refused."""
import os
import pickle

import pytest
import torch

from .conftest import BIN, run


class _Evil:
    """Unpickling this would create a file: the kind of checkpoint that must be refused."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    from fairseq import checkpoint_utils

    marker = str(tmp_path / "pwned")
    ckpt = str(tmp_path / "evil.pt")
    torch.save({"model": {}, "args": _Evil(marker)}, ckpt)
    with pytest.raises(pickle.UnpicklingError) as e:
        checkpoint_utils.load_checkpoint_to_cpu(ckpt)
    assert not os.path.exists(marker)
    from m3p_fairseq.errors import refused_checkpoint_message

    assert "refused to load a checkpoint" in refused_checkpoint_message(e.value)


def test_crafted_checkpoint_through_the_cli(tmp_path, tiny_world):
    marker = str(tmp_path / "pwned")
    ckpt = str(tmp_path / "evil.pt")
    torch.save({"model": {}, "args": _Evil(marker), "cfg": None}, ckpt)
    res = run([os.path.join(BIN, "fairseq-train"), tiny_world["data"], "--user-dir", "m3p_fairseq", "--task",
               "multitask_multimodal", "--arch", "m3p_tiny", "--criterion", "m3p_pretrain", "--cpu", "--batch-size",
               "4", "--max-update", "1", "--restore-file", ckpt, "--save-dir", str(tmp_path / "ck")], check=False)
    assert res.returncode != 0 and not os.path.exists(marker)
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: refused to load a checkpoint") and "Traceback" not in res.stderr


def test_fairseq_checkpoints_load_with_weights_only(tmp_path):
    """argparse / omegaconf / numpy objects in a fairseq checkpoint are on the allowlist."""
    import argparse

    import numpy as np
    from fairseq import checkpoint_utils
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
