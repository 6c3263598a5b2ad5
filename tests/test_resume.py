"""Exact resume after a kill at any moment: between checkpoints, inside a checkpoint's write and
inside its copy to checkpoint_last.pt; the same command again gives the same per-update losses."""
import json
import os
import signal
import subprocess
import time

import pytest
import torch

from m3p_fairseq.checkpoint_guard import incomplete, newest_complete

from .conftest import BIN, ROOT


def _cmd(data, save_dir, updates=36):
    return [os.path.join(BIN, "fairseq-train"), data, "--user-dir", "m3p_fairseq", "--task", "multitask_multimodal",
            "--arch", "m3p_tiny", "--criterion", "m3p_pretrain", "--optimizer", "adam", "--lr", "1e-3",
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "5", "--max-update", str(updates),
            "--batch-size", "8", "--cpu", "--num-workers", "0", "--seed", "7", "--save-dir", save_dir,
            "--save-interval-updates", "10", "--no-epoch-checkpoints", "--disable-validation",
            "--log-format", "json", "--log-interval", "1", "--objective-ratios", "1,1,1,1"]


def _losses(text):
    out = {}
    for line in text.splitlines():
        if "train_inner" in line and "{" in line:
            rec = json.loads(line[line.index("{"):])
            out[int(rec["num_updates"])] = rec["loss"]
    return out


def _env(**extra):
    # unbuffered: the log must show each update as it happens, or the kill below lands too late
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1",
               PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def reference(tiny_world, tmp_path_factory):
    """Per-update losses of the uninterrupted run."""
    whole = subprocess.run(_cmd(tiny_world["data"], str(tmp_path_factory.mktemp("whole"))), cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    losses = _losses(whole.stdout)
    assert len(losses) == 36
    return losses


def test_sigkill_then_resume_gives_the_same_losses(tiny_world, reference, tmp_path):
    data = tiny_world["data"]

    save = str(tmp_path / "b")
    log = open(str(tmp_path / "b.log"), "w")
    proc = subprocess.Popen(_cmd(data, save), cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:  # kill after update 24: between checkpoints 20 and 30
        if max(_losses(open(str(tmp_path / "b.log")).read()) or [0]) >= 24:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    killed_at = max(_losses(open(str(tmp_path / "b.log")).read()))
    assert 24 <= killed_at < 30, killed_at
    assert os.path.exists(os.path.join(save, "checkpoint_last.pt"))

    again = subprocess.run(_cmd(data, save), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Loaded checkpoint" in again.stdout
    resumed = _losses(again.stdout)
    assert min(resumed) == 21 and max(resumed) == 36  # from checkpoint_last (update 20), mid-epoch
    for u in range(21, 37):
        assert resumed[u] == reference[u], (u, resumed[u], reference[u])


def _run_killed_in(where, data, save, tmp_path):
    """The training command with a sitecustomize that SIGKILLs it inside a checkpoint write or copy."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text("from tests import save_faults\nsave_faults.install()\n")
    env = _env(M3P_KILL_IN=where, PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
    return subprocess.run(_cmd(data, save), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _warning(res):
    lines = [l for l in (res.stdout + res.stderr).splitlines() if "the newest complete checkpoint" in l]
    assert len(lines) == 1, (res.stdout + res.stderr)[-3000:]
    return lines[0]


def test_killed_inside_a_write_and_inside_a_copy_resumes_from_the_newest_complete(tiny_world, reference, tmp_path):
    data, save = tiny_world["data"], str(tmp_path / "ck")
    ck = lambda name: os.path.join(save, name)  # noqa: E731

    # 1. killed half-way through writing the save at update 20 (fairseq's own .tmp write)
    first = _run_killed_in("write:2", data, save, tmp_path)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert max(_losses(first.stdout)) == 20
    assert incomplete(ck("checkpoint_1_20.pt.tmp")) and not os.path.exists(ck("checkpoint_1_20.pt"))

    # 2. the same command resumes from update 10, then is killed half-way through the copy of update 30
    second = _run_killed_in("copy:2", data, save, tmp_path)
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert "checkpoint_1_20.pt.tmp (an unfinished write)" in _warning(second)
    losses = _losses(second.stdout)
    assert min(losses) == 11 and max(losses) == 30
    # the plugin copies through a .tmp: checkpoint_last.pt still holds update 20, whole
    assert incomplete(ck("checkpoint_last.pt.tmp")) and incomplete(ck("checkpoint_last.pt")) is None
    assert incomplete(ck("checkpoint_1_30.pt")) is None
    # 3. what fairseq's plain copy leaves instead: a truncated checkpoint_last.pt, newer than the rest
    os.replace(ck("checkpoint_last.pt.tmp"), ck("checkpoint_last.pt"))
    third = subprocess.run(_cmd(data, save), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-2000:]
    warning = _warning(third)
    assert f"resuming from {ck('checkpoint_1_30.pt')}" in warning and f"{ck('checkpoint_last.pt')} (truncated)" in warning
    assert f"Loaded checkpoint {ck('checkpoint_1_30.pt')}" in third.stdout
    losses.update(_losses(third.stdout))
    assert sorted(losses) == list(range(11, 37))
    for u in range(11, 37):
        assert losses[u] == reference[u], (u, losses[u], reference[u])


def _save(path, updates):
    torch.save({"model": {}, "optimizer_history": [{"num_updates": updates}]}, path)


def test_newest_complete_checkpoint(tmp_path):
    d = str(tmp_path)
    for i, name in enumerate(["checkpoint_1_10.pt", "checkpoint_1_20.pt", "checkpoint_best.pt", "checkpoint_last.pt"]):
        _save(os.path.join(d, name), 10 * i)
        os.utime(os.path.join(d, name), (1000 + i, 1000 + i))
    assert newest_complete(d) == (os.path.join(d, "checkpoint_last.pt"), [])
    # a truncated checkpoint_last.pt is skipped for the newest whole file; so is an empty one
    last = os.path.join(d, "checkpoint_last.pt")
    data = open(last, "rb").read()
    for cut in (data[: len(data) - 30], b""):
        with open(last, "wb") as f:
            f.write(cut)
        os.utime(last, (1003, 1003))
        chosen, skipped = newest_complete(d)
        assert chosen == os.path.join(d, "checkpoint_best.pt") and [p for p, _ in skipped] == [last]
    # an unfinished .tmp newer than the answer is reported; an older one (already superseded) is not
    open(os.path.join(d, "checkpoint_1_30.pt.tmp"), "wb").write(data[:100])
    os.utime(os.path.join(d, "checkpoint_1_30.pt.tmp"), (1004, 1004))
    open(os.path.join(d, "checkpoint_1_5.pt.tmp"), "wb").write(data[:100])
    os.utime(os.path.join(d, "checkpoint_1_5.pt.tmp"), (900, 900))
    _, skipped = newest_complete(d)
    assert [os.path.basename(p) for p, _ in skipped] == ["checkpoint_last.pt", "checkpoint_1_30.pt.tmp"]
    # equal times (a coarse file system): checkpoint_last.pt wins, as fairseq would choose
    _save(last, 30)
    os.utime(last, (1002, 1002))
    assert newest_complete(d)[0] == last
