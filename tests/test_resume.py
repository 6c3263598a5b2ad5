"""Exact resume: SIGKILL between checkpoints, the same command again, the same per-update losses."""
import json
import os
import signal
import subprocess
import time

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


def _env():
    # unbuffered: the log must show each update as it happens, or the kill below lands too late
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1",
                PATH=BIN + os.pathsep + os.environ.get("PATH", ""))


def test_sigkill_then_resume_gives_the_same_losses(tiny_world, tmp_path):
    data = tiny_world["data"]
    whole = subprocess.run(_cmd(data, str(tmp_path / "a")), cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    reference = _losses(whole.stdout)
    assert len(reference) == 36

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
