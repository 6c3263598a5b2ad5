"""The real commands: fairseq-train --user-dir on a tiny world, then m3p-retrieval-eval; bad input."""
import json
import os
import shutil

import numpy as np
import pytest

from .conftest import BIN, ROOT, run


def _train(data, save_dir, updates, extra=(), cwd=None, user_dir="m3p_fairseq"):
    return run([os.path.join(BIN, "fairseq-train"), data, "--user-dir", user_dir,
                "--task", "multitask_multimodal", "--arch", "m3p_tiny", "--criterion", "m3p_pretrain",
                "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "1e-3", "--clip-norm", "1.0",
                "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "20", "--max-update", str(updates),
                "--batch-size", "16", "--cpu", "--num-workers", "0", "--seed", "1", "--save-dir", save_dir,
                "--no-epoch-checkpoints", "--disable-validation", "--log-format", "json", "--log-interval", "5",
                *extra], cwd=cwd)


def _records(log):
    return [json.loads(line[line.index("{"):]) for line in log.splitlines() if "train_inner" in line and "{" in line]


def _series(log, key):
    return [float(r[key]) for r in _records(log) if r.get(key) is not None]


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("ckpt"))
    # run from another folder: --user-dir m3p_fairseq must resolve wherever the user stands
    res = _train(tiny_world["data"], save, 240, ["--objective-ratios", "1,1,1,1", "--tensorboard-logdir",
                                                 os.path.join(save, "tb")], cwd=str(tmp_path_factory.mktemp("cwd")))
    return save, res


def _tensorboard_scalars(folder):
    """tag -> [(step, value)] from the event files of ``folder`` (TFRecord framing, tensorboardX's protos)."""
    import glob
    import struct

    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            while True:
                head = f.read(12)  # u64 length + u32 crc, then the record and its u32 crc
                if len(head) < 12:
                    break
                record = f.read(struct.unpack("<Q", head[:8])[0])
                f.read(4)
                event = event_pb2.Event()
                event.ParseFromString(record)
                for v in event.summary.value:
                    out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_tensorboard_gets_the_per_objective_metrics(trained):
    """--tensorboard-logdir: every objective's loss, accuracy and batch count, at the logged updates,
    with the values the text log prints."""
    save, res = trained
    scalars = _tensorboard_scalars(os.path.join(save, "tb", "train_inner"))
    for key in ("xmlm_loss", "mmlm_loss", "mrm_mse", "mrm_ce", "mrm_acc", "vlm_loss", "vlm_acc",
                "xmlm_batches", "mmlm_batches", "mrm_batches", "vlm_batches"):
        logged = [(int(r["num_updates"]), float(r[key])) for r in _records(res.stdout) if r.get(key) is not None]
        assert key in scalars and len(logged) >= 6, (key, sorted(scalars))
        assert [s for s, _ in scalars[key]] == [s for s, _ in logged], key  # the same updates
        assert np.allclose([v for _, v in scalars[key]], [v for _, v in logged], atol=2e-3, rtol=1e-3), key


def test_each_objective_loss_falls(trained):
    _, res = trained
    for key in ("xmlm_loss", "mmlm_loss", "mrm_mse", "mrm_ce", "vlm_loss"):
        s = _series(res.stdout, key)
        assert len(s) >= 6, (key, s)
        first, last = np.mean(s[:2]), np.mean(s[-2:])
        assert last < first, f"{key} did not fall: {s}"


def test_retrieval_eval_writes_results(trained, tiny_world, tmp_path):
    save, _ = trained
    results = str(tmp_path / "results.json")
    res = run([os.path.join(BIN, "m3p-retrieval-eval"), tiny_world["data"], "--path",
               os.path.join(save, "checkpoint_last.pt"), "--split", "test", "--langs", "en,de",
               "--results", results, "--key", "retrieval.zero_shot"])
    doc = json.load(open(results))
    zs = doc["retrieval"]["zero_shot"]
    assert set(zs) == {"en", "de"}
    for lang in zs:
        assert set(zs[lang]) >= {"mR", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"}
        assert 0.0 <= zs[lang]["mR"] <= 100.0
    assert 0 < doc["retrieval"]["chance_mR"] < 100
    assert "en: mR" in res.stdout


def test_sharded_eval_merges_exactly(trained, tiny_world, tmp_path):
    save, _ = trained
    ck = os.path.join(save, "checkpoint_last.pt")
    cmd = [os.path.join(BIN, "m3p-retrieval-eval"), tiny_world["data"], "--path", ck, "--langs", "en"]
    parts = []
    for k in range(2):
        out = str(tmp_path / f"s{k}.npz")
        run(cmd + ["--num-shards", "2", "--shard-id", str(k), "--scores-out", out])
        parts.append(out)
    merged = run(cmd + ["--merge"] + parts).stdout
    whole = run(cmd).stdout
    assert merged == whole


def _expect_one_line_error(res, *needles):
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    for n in needles:
        assert n in last, (n, res.stderr[-2000:])
    assert "Traceback" not in res.stderr


def _copy_data(tiny_world, tmp_path):
    data = str(tmp_path / "data")
    shutil.copytree(tiny_world["data"], data, symlinks=False)
    return data


def test_bad_input_missing_image_id(tiny_world, tmp_path):
    data = _copy_data(tiny_world, tmp_path)
    ids = os.path.join(data, "captions", "en", "train.ids")
    lines = open(ids).read().splitlines()
    lines[4] = "no_such_image"
    open(ids, "w").write("\n".join(lines) + "\n")
    res = run([os.path.join(BIN, "fairseq-train"), data, "--user-dir", "m3p_fairseq", "--task", "multitask_multimodal",
             "--arch", "m3p_tiny", "--cpu", "--criterion", "m3p_pretrain", "--max-update", "1", "--batch-size", "4",
             "--save-dir", str(tmp_path / "ck")], check=False)
    _expect_one_line_error(res, "train.ids", "no_such_image")
    assert not os.path.exists(str(tmp_path / "ck" / "checkpoint_last.pt"))


def test_bad_input_line_count_mismatch(tiny_world, tmp_path):
    data = _copy_data(tiny_world, tmp_path)
    ids = os.path.join(data, "captions", "en", "train.ids")
    lines = open(ids).read().splitlines()
    open(ids, "w").write("\n".join(lines[:-3]) + "\n")
    res = run([os.path.join(BIN, "m3p-retrieval-eval"), data, "--path", "missing.pt"], check=False)
    _expect_one_line_error(res, "missing.pt")
    res = run([os.path.join(BIN, "fairseq-train"), data, "--user-dir", "m3p_fairseq", "--task",
               "multitask_multimodal", "--arch", "m3p_tiny", "--cpu", "--criterion", "m3p_pretrain",
               "--max-update", "1", "--batch-size", "4", "--save-dir", str(tmp_path / "ck")], check=False)
    _expect_one_line_error(res, "train.ids", f"{len(lines) - 3} image ids for {len(lines)} captions")


def test_bad_input_unknown_language(tiny_world, tmp_path):
    res = run([os.path.join(BIN, "fairseq-train"), tiny_world["data"], "--user-dir", "m3p_fairseq", "--task",
               "multitask_multimodal", "--arch", "m3p_tiny", "--cpu", "--criterion", "m3p_pretrain",
               "--caption-langs", "xx", "--max-update", "1", "--batch-size", "4", "--save-dir", str(tmp_path / "ck")], check=False)
    _expect_one_line_error(res, "captions/xx", "no captions for language 'xx'")


def test_bad_input_empty_caption_and_nan_features(tiny_world, tmp_path):
    from preprocess.make_world import main as make_world

    raw = str(tmp_path / "raw.txt")
    open(raw, "w").write("a red dog\n\na blue cat\n")
    res = run([os.path.join(BIN, "m3p-binarize"), "--spm", os.path.join(tiny_world["data"], "sentencepiece.bpe.model"),
               "--dict", os.path.join(tiny_world["data"], "dict.txt"), "--out", str(tmp_path / "out"),
               "--train", raw], check=False)
    _expect_one_line_error(res, "raw.txt", "line 2 is empty")
    assert not os.path.exists(str(tmp_path / "out"))
    assert [p for p in os.listdir(str(tmp_path)) if p.startswith(".binarize")] == []


def test_bad_input_wrong_feature_dimension(tiny_world, tmp_path):
    """A region store of another dimension than the model's: one line naming the flag and the store."""
    res = run([os.path.join(BIN, "fairseq-train"), tiny_world["data"], "--user-dir", "m3p_fairseq", "--task",
               "multitask_multimodal", "--arch", "m3p_tiny", "--cpu", "--criterion", "m3p_pretrain",
               "--region-feat-dim", "2048", "--max-update", "1", "--batch-size", "4", "--save-dir", str(tmp_path / "ck")], check=False)
    _expect_one_line_error(res, "--region-feat-dim 2048 does not match the region store (32)")
