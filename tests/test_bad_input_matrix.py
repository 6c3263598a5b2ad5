"""The bad-input matrix: each malformed input ends in one error line naming the file and the id or line,
and leaves no partial output. (The README's "Bad input" table lists the same cases.)"""
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from m3p_fairseq.errors import M3PInputError
from m3p_fairseq.data.region_store import RegionShardWriter, RegionStore, write_manifest
from preprocess.binarize import BinarizeError, binarize

from .conftest import BIN, run


def _good_image(n=3, dim=8):
    return {"features": np.ones((n, dim), np.float32), "boxes": np.tile([[1, 1, 5, 5]], (n, 1)),
            "classes": np.zeros(n, int), "width": 10, "height": 10}


def _shard(tmp, name="s.h5", images=("a", "b"), dim=8):
    path = os.path.join(tmp, name)
    with RegionShardWriter(path, feat_dim=dim, num_classes=4) as w:
        for i in images:
            w.add(i, **_good_image(dim=dim))
    return path


# ---- region files: writing ---------------------------------------------------------------------
WRITE_CASES = {
    "feature of the wrong dimension": dict(features=np.ones((3, 9))),
    "NaN in features": dict(features=np.full((3, 8), np.nan)),
    "Inf in boxes": dict(boxes=np.array([[1, 1, np.inf, 5]] * 3)),
    "zero regions": dict(features=np.ones((0, 8)), boxes=np.zeros((0, 4)), classes=np.zeros(0, int)),
    "box outside the image": dict(boxes=np.array([[1, 1, 50, 5]] * 3)),
    "x2 < x1": dict(boxes=np.array([[5, 1, 2, 5]] * 3)),
    "detector class out of range": dict(classes=np.array([0, 1, 9])),
    "non-positive image size": dict(width=0),
}


@pytest.mark.parametrize("case", sorted(WRITE_CASES))
def test_region_write(case, tmp_path):
    path = str(tmp_path / "out.h5")
    image = dict(_good_image(), **WRITE_CASES[case])
    with pytest.raises(M3PInputError) as e:
        with RegionShardWriter(path, feat_dim=8, num_classes=4) as w:
            w.add("img7", **_good_image())
            w.add("img8", **image)
    msg = str(e.value)
    assert "\n" not in msg and "out.h5" in msg and "img8" in msg
    assert os.listdir(str(tmp_path)) == []  # neither the shard nor its temporary file


def test_region_write_duplicate_id(tmp_path):
    with pytest.raises(M3PInputError, match="out.h5: image 'x' appears twice"):
        with RegionShardWriter(str(tmp_path / "out.h5"), feat_dim=8, num_classes=4) as w:
            w.add("x", **_good_image())
            w.add("x", **_good_image())
    assert os.listdir(str(tmp_path)) == []


# ---- region files: reading ---------------------------------------------------------------------
def _drop(key):
    def f(tmp):
        p = _shard(tmp)
        with h5py.File(p, "r+") as h:
            del h[key]
        return p, "s.h5"
    return f


def _truncate(tmp):
    p = _shard(tmp, images=[f"i{k}" for k in range(50)])
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 3)
    return p, "s.h5"


def _manifest_not_json(tmp):
    p = os.path.join(tmp, "m.json")
    open(p, "w").write("{not json")
    return p, "m.json"


def _manifest_wrong_format(tmp):
    p = os.path.join(tmp, "m.json")
    json.dump({"format": "something-else", "shards": []}, open(p, "w"))
    return p, "m.json"


def _manifest_missing_shard(tmp):
    s = _shard(tmp)
    p = os.path.join(tmp, "m.json")
    write_manifest(p, [s], 8, 4)
    os.remove(s)
    return p, "s.h5"


def _duplicate_across_shards(tmp):
    a, b = _shard(tmp, "a.h5", ["x", "y"]), _shard(tmp, "b.h5", ["y", "z"])
    p = os.path.join(tmp, "m.json")
    write_manifest(p, [a, b], 8, 4)
    return p, "'y'"


def _offsets_corrupt(tmp):
    p = _shard(tmp)
    with h5py.File(p, "r+") as h:
        h["offsets"][1] = 99
    return p, "s.h5"


READ_CASES = {"missing boxes": _drop("boxes"), "missing offsets": _drop("offsets"),
              "missing features": _drop("features"), "truncated shard": _truncate,
              "manifest not JSON": _manifest_not_json, "manifest of another format": _manifest_wrong_format,
              "manifest names a missing shard": _manifest_missing_shard,
              "image id in two shards": _duplicate_across_shards, "corrupt offsets": _offsets_corrupt}


@pytest.mark.parametrize("case", sorted(READ_CASES))
def test_region_read(case, tmp_path):
    path, needle = READ_CASES[case](str(tmp_path))
    with pytest.raises(M3PInputError) as e:
        RegionStore(path)
    assert "\n" not in str(e.value) and needle in str(e.value)


def test_region_read_nan_names_the_image(tmp_path):
    p = _shard(str(tmp_path))
    with h5py.File(p, "r+") as h:
        h["features"][4, 0] = np.nan  # second image's second region
    store = RegionStore(p)
    store.get(0)
    with pytest.raises(M3PInputError, match=r"s.h5: image 'b' has NaN"):
        store.get(1)


# ---- text --------------------------------------------------------------------------------------
def _bin(tiny_world, tmp_path, lines, ids=None, **kw):
    raw = str(tmp_path / "train.en.txt")
    open(raw, "w").write("".join(l + "\n" for l in lines))
    if ids is not None:
        open(str(tmp_path / "train.en.ids"), "w").write("".join(i + "\n" for i in ids))
    out = str(tmp_path / "out")
    binarize(os.path.join(tiny_world["data"], "sentencepiece.bpe.model"), os.path.join(tiny_world["data"], "dict.txt"),
             out, {"train": raw}, **kw)
    return out


TEXT_CASES = {
    "empty line": (["a red dog", "   ", "a cat"], None, {}, "train.en.txt: line 2 is empty"),
    "ids and captions of different lengths": (["a red dog", "a cat"], ["i1"], {}, "train.en.ids: 1 image ids for 2 captions"),
    "empty image id": (["a red dog", "a cat"], ["i1", ""], {}, "train.en.ids: line 2 has no image id"),
    "over-long line": (["a red dog " * 40], None, {"max_tokens": 20}, "train.en.txt: line 1 has"),
    "captions without ids": (["a red dog"], None, {"require_ids": True}, "train.en.ids: missing"),
}


@pytest.mark.parametrize("case", sorted(TEXT_CASES))
def test_text_binarize(case, tiny_world, tmp_path):
    lines, ids, kw, needle = TEXT_CASES[case]
    with pytest.raises(BinarizeError) as e:
        _bin(tiny_world, tmp_path, lines, ids, **kw)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(str(tmp_path / "out"))
    assert not [p for p in os.listdir(str(tmp_path)) if p.startswith(".binarize")]


def _task(tiny_world, data=None, **overrides):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [data or tiny_world["data"], "--task", "multitask_multimodal", "--arch", "m3p_tiny", "--cpu"]
    for k, v in overrides.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    return tasks.setup_task(convert_namespace_to_omegaconf(args).task)


def _edit_ids(tiny_world, tmp_path, edit):
    data = str(tmp_path / "data")
    shutil.copytree(tiny_world["data"], data)
    ids = os.path.join(data, "captions", "en", "train.ids")
    lines = open(ids).read().splitlines()
    open(ids, "w").write("".join(l + "\n" for l in edit(lines)))
    return data


TASK_CASES = {
    "unknown caption language": (lambda tw, tp: (None, {"caption_langs": "xx"}), "no captions for language 'xx'"),
    "image id without features": (lambda tw, tp: (_edit_ids(tw, tp, lambda l: l[:3] + ["ghost"] + l[4:]), {}),
                                  "train.ids: image 'ghost' has no features"),
    "id file shorter than captions": (lambda tw, tp: (_edit_ids(tw, tp, lambda l: l[:-1]), {}), "image ids for"),
    "caption longer than tokens-per-sample": (lambda tw, tp: (None, {"tokens_per_sample": 6}),
                                              "more than --tokens-per-sample 6"),
    "unknown text language": (lambda tw, tp: (None, {"text_langs": "en,qq"}), "no text for language 'qq'"),
}


@pytest.mark.parametrize("case", sorted(TASK_CASES))
def test_task_data(case, tiny_world, tmp_path):
    make, needle = TASK_CASES[case]
    data, overrides = make(tiny_world, tmp_path)
    with pytest.raises(M3PInputError) as e:
        _task(tiny_world, data, **overrides).load_dataset("train")
    assert needle in str(e.value) and "\n" not in str(e.value)


# ---- configs -----------------------------------------------------------------------------------
CONFIG_CASES = {
    "unknown objective": ({"objectives": "xmlm,nope"}, "unknown objective 'nope'"),
    "ratios summing to 0": ({"objective_ratios": "0,0,0,0"}, "sum to more than 0"),
    "ratios of the wrong count": ({"objective_ratios": "1,1"}, "2 values for 4 objectives"),
    "ratios not numbers": ({"objective_ratios": "a,b,c,d"}, "not numbers"),
    "missing data folder": ({"data": "/nonexistent/m3p"}, "/nonexistent/m3p: data folder not found"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config(case, tiny_world):
    overrides, needle = dict(CONFIG_CASES[case][0]), CONFIG_CASES[case][1]
    data = overrides.pop("data", None)
    with pytest.raises(M3PInputError) as e:
        _task(tiny_world, data, **overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


CRITERION_CASES = {
    "generation criterion for understanding objectives": (
        ["--task", "multitask_multimodal", "--arch", "m3p_tiny", "--criterion", "m3p_generation"],
        "--criterion m3p_generation: the multitask_multimodal task's batches are trained with --criterion m3p_pretrain"),
    "pre-training criterion for retrieval": (
        ["--task", "m3p_retrieval", "--arch", "m3p_tiny", "--criterion", "m3p_pretrain"],
        "--criterion m3p_pretrain: the m3p_retrieval task's batches are trained with --criterion m3p_retrieval"),
}


@pytest.mark.parametrize("case", sorted(CRITERION_CASES))
def test_config_criterion_of_another_task(case, tiny_world, tmp_path):
    flags, needle = CRITERION_CASES[case]
    res = run([os.path.join(BIN, "fairseq-train"), tiny_world["data"], "--user-dir", "m3p_fairseq", *flags,
               "--optimizer", "adam", "--lr", "1e-3", "--max-update", "1", "--batch-size", "4", "--cpu",
               "--save-dir", str(tmp_path / "ck"), "--disable-validation"], check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert needle in res.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "ck" / "checkpoint_last.pt")


# ---- checkpoints -------------------------------------------------------------------------------
def test_checkpoint_truncated(tiny_world, tmp_path):
    ck = str(tmp_path / "ck.pt")
    torch.save({"model": {"w": torch.zeros(1000)}, "args": None}, ck)
    with open(ck, "r+b") as f:
        f.truncate(os.path.getsize(ck) // 2)
    res = run([os.path.join(BIN, "m3p-retrieval-eval"), tiny_world["data"], "--path", ck], check=False)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert "ck.pt: cannot load checkpoint" in last and "Traceback" not in res.stderr


def test_checkpoint_missing(tiny_world, tmp_path):
    res = run([os.path.join(BIN, "m3p-retrieval-eval"), tiny_world["data"], "--path", str(tmp_path / "none.pt")],
              check=False)
    assert res.returncode != 0 and "none.pt: checkpoint not found" in res.stderr.strip().splitlines()[-1]
