"""The plugin as a guest in fairseq's processes: a stock task (language_modeling) trains, saves and
fails the same with ``--user-dir m3p_fairseq`` as without it, and the plugin's own one-line errors
end the process as Python does (stdout flushed, atexit handlers run, exit status 1)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from .conftest import BIN, ROOT, run

# wall-clock measurements, which differ between any two runs
TIMING = {"wps", "ups", "wpb_per_s", "wall", "train_wall", "gb_free"}
WORDS = "the a red blue green dog cat car cup kite left right of above below runs sits".split()


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory):
    """A few hundred words of deterministic text, binarized by fairseq-preprocess."""
    base = tmp_path_factory.mktemp("lm")
    for split, n in (("train", 60), ("valid", 8)):
        lines = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(5 + i % 6)) for i in range(n)]
        (base / f"{split}.txt").write_text("\n".join(lines) + "\n")
    run([os.path.join(BIN, "fairseq-preprocess"), "--only-source", "--trainpref", str(base / "train.txt"),
         "--validpref", str(base / "valid.txt"), "--destdir", str(base / "bin"), "--workers", "1"])
    return str(base / "bin")


def _train(data, save_dir, *extra, plugin):
    return run([os.path.join(BIN, "fairseq-train"), data, *(["--user-dir", "m3p_fairseq"] if plugin else []),
                "--task", "language_modeling", "--arch", "transformer_lm", "--decoder-layers", "1",
                "--decoder-embed-dim", "16", "--decoder-ffn-embed-dim", "32", "--decoder-attention-heads", "2",
                "--dropout", "0", "--tokens-per-sample", "16", "--optimizer", "adam", "--lr", "1e-3",
                "--max-update", "12", "--batch-size", "4", "--required-batch-size-multiple", "1", "--cpu",
                "--num-workers", "0", "--seed", "3",
                "--save-dir", save_dir, "--no-epoch-checkpoints", "--log-format", "json", "--log-interval", "1",
                *extra], check=False)


def _records(res):
    """Every logged record (train_inner per update, valid and train per epoch) without its timings."""
    out = []
    for line in res.stdout.splitlines():
        for kind in ("train_inner", "valid", "train"):
            if f"| {kind} |" in line and "{" in line:
                rec = json.loads(line[line.index("{"):])
                # per-epoch records prefix their keys with the kind (train_wps, valid_wall)
                out.append((kind, {k: v for k, v in rec.items() if k.removeprefix(kind + "_") not in TIMING}))
    return out


def _traceback(res):
    err = res.stderr
    return err[err.index("Traceback (most recent call last)"):]


def test_a_stock_task_runs_the_same_with_the_plugin(lm_data, tmp_path):
    runs = {plugin: _train(lm_data, str(tmp_path / str(plugin)), plugin=plugin) for plugin in (False, True)}
    for res in runs.values():
        assert res.returncode == 0, res.stderr[-3000:]
    stock, guest = _records(runs[False]), _records(runs[True])
    assert sum(kind == "train_inner" for kind, _ in stock) == 12 and any(kind == "valid" for kind, _ in stock)
    assert guest == stock
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        a, b = (torch.load(str(tmp_path / str(p) / name), weights_only=False) for p in (False, True))
        assert a["model"].keys() == b["model"].keys()
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        assert a["optimizer_history"] == b["optimizer_history"] and a["extra_state"]["train_iterator"] == \
            b["extra_state"]["train_iterator"]
    assert not [n for n in os.listdir(tmp_path / "True") if n.endswith(".tmp")]

    # a stock error (a checkpoint of other sizes): the same exit status and the same traceback
    ckpt = str(tmp_path / "False" / "checkpoint_last.pt")
    fails = {plugin: _train(lm_data, str(tmp_path / f"bad{plugin}"), "--restore-file", ckpt,
                            "--decoder-embed-dim", "32", plugin=plugin) for plugin in (False, True)}
    assert fails[False].returncode == fails[True].returncode == 1
    assert "Cannot load model parameters from checkpoint" in _traceback(fails[False])
    assert _traceback(fails[True]) == _traceback(fails[False])


def test_the_plugins_input_errors_end_the_process_normally(tmp_path):
    script = ("import atexit\n"
              "import m3p_fairseq\n"
              "from m3p_fairseq.errors import M3PInputError\n"
              "atexit.register(lambda: print('atexit handler ran'))\n"
              "print('buffered output', end=' ')\n"
              "raise M3PInputError('x.txt: line 3 is bad')\n")
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == "error: x.txt: line 3 is bad" and "Traceback" not in res.stderr
    assert res.stdout == "buffered output atexit handler ran\n"  # stdout is a pipe here: block-buffered
    # M3P_TRACEBACK=1 shows Python's traceback instead
    res = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=dict(env, M3P_TRACEBACK="1"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "Traceback" in res.stderr and "M3PInputError: x.txt: line 3 is bad" in res.stderr
