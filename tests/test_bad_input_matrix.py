"""The bad-input matrix: each malformed input ends in one error line naming the file and the id or line,
and leaves no partial output. (The README's "Bad input" table lists the same cases.)

The first part checks the readers and writers themselves; the second (``commands``) runs the commands
users run: the console scripts' ``main(argv)`` in this process (their error boundary ends them with
``SystemExit``, which is what the script's exit status and stderr line come from) and
``fairseq-train`` as a process, with files already in the output place checked to survive."""
import gzip
import json
import logging
import os
import shutil
import sys
import tarfile

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
def test_checkpoint_missing(tiny_world, tmp_path):
    res = run([os.path.join(BIN, "m3p-retrieval-eval"), tiny_world["data"], "--path", str(tmp_path / "none.pt")],
              check=False)
    assert res.returncode != 0 and "none.pt: checkpoint not found" in res.stderr.strip().splitlines()[-1]


# ---- commands ----------------------------------------------------------------------------------
# Each case runs a command as its user does and checks: one line naming the file (and the line or id),
# a non-zero exit, and the output place as it was (files already there survive, no half-written file,
# no folder the command made).
KEEP = "keep.txt"


def _refused(main, argv, *needles):
    """The one line ``main(argv)`` ends with (its console script prints it on stderr, exit status 1)."""
    root = logging.getLogger()
    level = root.level  # the evaluation commands quieten the root logger for their process
    try:
        with pytest.raises(SystemExit) as e:
            main(argv)
    finally:
        root.setLevel(level)
    message = str(e.value.code)
    assert e.value.code not in (0, None) and "\n" not in message and "Traceback" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def _place(folder):
    """An output folder holding a file of the user's, which a refused command must leave alone."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, KEEP), "w") as f:
        f.write("mine\n")
    return str(folder)


def _as_it_was(folder, *also):
    assert sorted(os.listdir(folder)) == sorted([KEEP, *also]), os.listdir(folder)
    assert open(os.path.join(folder, KEEP)).read() == "mine\n"


def _data_copy(tiny_world, tmp_path, *copied):
    """A data folder that links to the tiny world's, except ``copied`` entries (real copies, to damage)."""
    data = tmp_path / "data"
    data.mkdir(parents=True)
    for name in os.listdir(tiny_world["data"]):
        src = os.path.realpath(os.path.join(tiny_world["data"], name))
        if name in copied:
            (shutil.copytree if os.path.isdir(src) else shutil.copyfile)(src, str(data / name))
        else:
            os.symlink(src, str(data / name))
    return str(data)


def _nan_box(regions, shard, rows):
    with h5py.File(os.path.join(regions, shard), "r+") as h:
        h["boxes"][rows, 2] = np.nan


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_world, tmp_path_factory):
    """An untrained m3p_tiny checkpoint over the tiny world's dictionary, as fairseq saves one."""
    from fairseq import options, tasks

    from preprocess.weights import checkpoint_state

    args = options.parse_args_and_arch(options.get_training_parser(), [
        tiny_world["data"], "--task", "multitask_multimodal", "--arch", "m3p_tiny", "--criterion", "m3p_pretrain",
        "--cpu"])
    model = tasks.setup_task(args).build_model(args)
    path = str(tmp_path_factory.mktemp("ck") / "tiny.pt")
    torch.save(checkpoint_state(args, model, {}), path)
    return path


@pytest.fixture(scope="module")
def not_checkpoints(tiny_checkpoint, tmp_path_factory):
    """Files people give where a checkpoint belongs, and the start of what each must be called."""
    base = tmp_path_factory.mktemp("notck")
    whole = open(tiny_checkpoint, "rb").read()
    (base / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    (base / "notes.pt").write_text("trained for 3 days\n")
    with tarfile.open(str(base / "xlmr.base.tar.gz"), "w:gz") as t:  # fairseq's XLM-R download, as it comes
        t.add(tiny_checkpoint, arcname="xlmr.base/model.pt")
    return {"truncated.pt": "truncated", "notes.pt": "a text file, not a checkpoint",
            "xlmr.base.tar.gz": "a gzip-compressed tar archive", "path": str(base)}


def _retrieval_main():
    from m3p_fairseq.evaluation.downstream_cli import retrieval_main

    return retrieval_main


@pytest.mark.parametrize("name", ["truncated.pt", "notes.pt", "xlmr.base.tar.gz"])
def test_not_a_checkpoint_on_every_load_path(name, not_checkpoints, tiny_world, tmp_path):
    """The evaluation commands and the hub (fairseq-train below) say what the file is: truncated, text, a
    download still packed, never "would run code"."""
    from m3p_fairseq import M3PHub

    path = os.path.join(not_checkpoints["path"], name)
    results = _place(tmp_path / "out")
    message = _refused(_retrieval_main(), [tiny_world["data"], "--path", path, "--cpu", "--results",
                                           os.path.join(results, "r.json")], f"{path}: {not_checkpoints[name]}")
    assert "run code" not in message
    _as_it_was(results)
    with pytest.raises(M3PInputError) as e:
        M3PHub.from_pretrained(path, data_name_or_path=tiny_world["data"])
    assert str(e.value).startswith(f"{path}: {not_checkpoints[name]}") and "\n" not in str(e.value)


def test_each_kind_of_file_given_as_a_checkpoint_is_named(tiny_world, tmp_path):
    """What the loader says a file is, through the hub (every load path shares the loader)."""
    from m3p_fairseq import M3PHub

    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    files = {
        "empty.pt": (b"", "an empty file, not a checkpoint"),
        "lfs.pt": (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n", "a Git LFS pointer"),
        "model.safetensors": (len(header).to_bytes(8, "little") + header + bytes(4), "a safetensors file"),
        "w.gz": (gzip.compress(b"weights"), "a gzip-compressed file, not a checkpoint: decompress it"),
    }
    for name, (raw, _) in files.items():
        (tmp_path / name).write_bytes(raw)
    np.save(str(tmp_path / "a.npy"), np.zeros(3))
    np.savez(str(tmp_path / "a.npz"), a=np.zeros(3))
    torch.save({"encoder.weight": torch.zeros(2)}, str(tmp_path / "state.pt"))  # weights without fairseq's keys
    expected = {name: needle for name, (_, needle) in files.items()}
    expected.update({"a.npy": "a NumPy array file (.npy)", "a.npz": "a zip archive, not a torch checkpoint",
                     "state.pt": "a torch file but not a fairseq checkpoint"})
    for name, needle in expected.items():
        path = str(tmp_path / name)
        with pytest.raises(M3PInputError) as e:
            M3PHub.from_pretrained(path, data_name_or_path=tiny_world["data"])
        assert str(e.value).startswith(f"{path}: {needle}") and "\n" not in str(e.value), str(e.value)


def test_dictionary_of_another_size_than_the_checkpoint(tiny_world, tiny_checkpoint, tmp_path):
    data = _data_copy(tiny_world, tmp_path, "dict.txt")
    with open(os.path.join(data, "dict.txt"), "a") as f:
        f.write("zzextra1 1\nzzextra2 1\n")
    _refused(_retrieval_main(), [data, "--path", tiny_checkpoint, "--cpu"],
             f"{tiny_checkpoint}: the checkpoint's vocabulary has", "the dictionary given has")


def test_results_place_is_checked_before_evaluating(tiny_world, tiny_checkpoint, tmp_path, monkeypatch):
    from m3p_fairseq.evaluation import downstream_cli

    def evaluated(*args, **kwargs):
        raise AssertionError("the model was loaded before the output place was checked")

    monkeypatch.setattr(downstream_cli, "load_model_of_kind", evaluated)
    (tmp_path / "afile").write_text("x")
    for flags, needle in ((["--results", str(tmp_path / "afile" / "r.json")], "afile is a file, not a folder"),
                          (["--results", str(tmp_path)], "a folder, where a file is to be written"),
                          (["--num-shards", "2", "--scores-out", str(tmp_path / "afile" / "s.npz")], "afile is a file"),
                          (["--merge", str(tmp_path / "afile")], "not a scores file of --scores-out")):
        _refused(_retrieval_main(), [tiny_world["data"], "--path", tiny_checkpoint, "--cpu", *flags], needle)


def test_nan_box_at_evaluation(tiny_world, tiny_checkpoint, tmp_path):
    data = _data_copy(tiny_world, tmp_path, "regions")
    _nan_box(os.path.join(data, "regions"), "test.0.h5", 4)
    store = RegionStore(os.path.join(data, "regions", "test.json"))
    image = store.image_ids[int(np.searchsorted(np.cumsum(store.num_regions), 4, side="right"))]
    results = _place(tmp_path / "out")
    argv = [data, "--path", tiny_checkpoint, "--cpu", "--results", os.path.join(results, "r.json")]
    _refused(_retrieval_main(), argv, "test.0.h5", f"image {image!r}: boxes contain NaN or Inf")
    _as_it_was(results)


def test_region_store_checks_boxes_on_read(tmp_path):
    p = _shard(str(tmp_path))
    with h5py.File(p, "r+") as h:
        h["boxes"][3] = [6, 1, 2, 5]  # second image's first region: x2 < x1
        h["boxes"][1, 3] = np.nan  # first image
    store = RegionStore(p)
    with pytest.raises(M3PInputError, match=r"s.h5: image 'a': boxes contain NaN or Inf"):
        store.get(0)
    with pytest.raises(M3PInputError, match=r"s.h5: image 'b': a box lies outside the 10x10 image or has x2<x1"):
        store.get(1)


def test_binarize_refusals_leave_nothing(tiny_world, tmp_path):
    from preprocess.binarize import main

    spm, dic = (os.path.join(tiny_world["data"], n) for n in ("sentencepiece.bpe.model", "dict.txt"))
    raw = tmp_path / "raw.en.txt"
    raw.write_bytes("a red dog\n".encode() + "une tête\n".encode("latin-1"))
    data = _place(tmp_path / "data")
    _refused(main, ["--spm", spm, "--dict", dic, "--out", os.path.join(data, "captions", "en"), "--train", str(raw)],
             f"{raw}: line 2: not UTF-8 (byte 6 of the line is b'\\xea')")
    _as_it_was(data)  # no captions/ folder made for the refused output
    (tmp_path / "afile").write_text("x")
    _refused(main, ["--spm", spm, "--dict", dic, "--out", str(tmp_path / "afile" / "en"), "--train", str(raw)],
             "afile is a file, not a folder")


def test_caption_score_refusals(tmp_path):
    from m3p_fairseq.evaluation.caption_score_cli import main

    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("a dog\na cat\n")
    ref.write_bytes(b"a dog\n\xff a cat\n")
    results = _place(tmp_path / "out")
    _refused(main, ["--hyp", str(hyp), "--ref", str(ref), "--results", os.path.join(results, "r.json"), "--key", "c"],
             f"{ref}: line 2: not UTF-8")
    _as_it_was(results)
    (tmp_path / "afile").write_text("x")  # checked before the (missing) hypotheses are read
    _refused(main, ["--hyp", str(tmp_path / "missing.txt"), "--ref", str(hyp), "--results",
                    str(tmp_path / "afile" / "r.json"), "--key", "c"], "afile/r.json: cannot write here")


def test_muse_second_dictionary_bad_writes_none(tmp_path):
    from preprocess.datasets import main

    (tmp_path / "en-de.txt").write_text("dog Hund\ncat Katze\n", encoding="utf-8")
    (tmp_path / "en-fr.txt").write_text("dog chien\ncat\n", encoding="utf-8")
    data = tmp_path / "data"
    dictionaries = _place(data / "dictionaries")
    _refused(main, ["muse", str(tmp_path / "en-de.txt"), str(tmp_path / "en-fr.txt"), "--out", str(data)],
             "en-fr.txt: line 2: expected 'word translation', found 1 fields")
    _as_it_was(dictionaries)  # not even en-de.tsv, read before the bad file


def test_tmx_gz_that_is_not_gzip(tiny_world, tmp_path):
    from preprocess.datasets import main

    (tmp_path / "en-de.tmx.gz").write_text('<?xml version="1.0"?><tmx version="1.4"><body></body></tmx>\n')
    data = _place(tmp_path / "data")
    _refused(main, ["tmx", "--pair", "en-de", "--train", str(tmp_path / "en-de.tmx.gz"), "--out", data,
                    "--spm", os.path.join(tiny_world["data"], "sentencepiece.bpe.model"),
                    "--dict", os.path.join(tiny_world["data"], "dict.txt")],
             "en-de.tmx.gz: not gzip-compressed")
    _as_it_was(data)


def test_import_regions_refusal_leaves_no_folder(tmp_path):
    from preprocess.detectors import main

    src = tmp_path / "npz"
    src.mkdir()
    boxes = np.array([[1, 1, 5, 5], [2, 2, 6, np.nan]], np.float32)
    for name, b in (("img1", boxes[:1].repeat(2, 0)), ("img2", boxes)):
        np.savez(str(src / f"{name}.npz"), features=np.ones((2, 8), np.float32), boxes=b, objects=np.zeros(2, int),
                 image_w=10, image_h=10)
    regions = _place(tmp_path / "regions")
    (tmp_path / "regions" / "train.json").write_text("{}")
    for manifest, left in ((os.path.join(regions, "train.json"), ["train.json"]),
                           (str(tmp_path / "new" / "deep" / "train.json"), None)):
        _refused(main, ["npz", str(src), manifest, "--num-classes", "4", "--quiet", "--images-per-shard", "1"],
                 "img2.npz: image 'img2': boxes contain NaN or Inf")
    _as_it_was(regions, "train.json")
    assert open(os.path.join(regions, "train.json")).read() == "{}"
    assert not os.path.exists(tmp_path / "new")


def _train_argv(data, save_dir, *flags):
    return [data, "--user-dir", "m3p_fairseq", "--task", "multitask_multimodal", "--arch", "m3p_tiny", "--criterion",
            "m3p_pretrain", "--optimizer", "adam", "--lr", "1e-4", "--max-update", "2", "--batch-size", "4", "--cpu",
            "--num-workers", "0", "--disable-validation", "--save-dir", save_dir, *flags]


def test_fairseq_train_missing_restore_file(tiny_world, tmp_path):
    """The process: a typo in --restore-file is one line and exit status 1 (fairseq alone would train from
    scratch and end with 0)."""
    save = _place(tmp_path / "ck")
    res = run([os.path.join(BIN, "fairseq-train"), *_train_argv(tiny_world["data"], save, "--restore-file",
                                                                  str(tmp_path / "typo.pt"))], check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.strip().splitlines()[-1] == \
        f"error: {tmp_path / 'typo.pt'}: --restore-file not found (without it training would start from scratch)"
    _as_it_was(save)


def test_fairseq_train_bad_inputs(tiny_world, not_checkpoints, tmp_path, monkeypatch):
    """fairseq-train --user-dir m3p_fairseq through fairseq_cli's own main in this process (a process each
    would cost seconds of imports; the one above is one): the line the plugin's excepthook prints (one_line of
    the exception fairseq-train ends with), and the save folder as it was (no checkpoint, no crash.pt)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import train

    from m3p_fairseq.errors import one_line

    nan_data = _data_copy(tiny_world, tmp_path / "nan", "regions")
    for shard in ("train.0.h5", "train.1.h5"):  # every image: the first batch meets one
        _nan_box(os.path.join(nan_data, "regions"), shard, slice(None))
    ids_data = _data_copy(tiny_world, tmp_path / "ids", "captions")
    ids = os.path.join(ids_data, "captions", "en", "train.ids")
    lines = open(ids, "rb").read().splitlines(keepends=True)
    lines[6] = lines[6].strip() + b"\xe9\n"
    open(ids, "wb").write(b"".join(lines))
    dict_data = _data_copy(tiny_world, tmp_path / "dict", "dict.txt")
    with open(os.path.join(dict_data, "dict.txt"), "ab") as f:
        f.write("caf\xe9 1\n".encode("latin-1"))
    (tmp_path / "afile").write_text("x")
    data, notck = tiny_world["data"], not_checkpoints["path"]
    n_dict = len(open(os.path.join(dict_data, "dict.txt"), "rb").read().splitlines())
    cases = {  # name: (data, flags, what the line says)
        "missing --finetune-from-model": (data, ["--finetune-from-model", str(tmp_path / "typo.pt")],
                                          f"{tmp_path / 'typo.pt'}: --finetune-from-model not found"),
        "gzip download as --restore-file": (data, ["--restore-file", os.path.join(notck, "xlmr.base.tar.gz")],
                                            "xlmr.base.tar.gz: a gzip-compressed tar archive"),
        "truncated --restore-file": (data, ["--restore-file", os.path.join(notck, "truncated.pt")],
                                     "truncated.pt: truncated"),
        "text as --restore-file": (data, ["--restore-file", os.path.join(notck, "notes.pt")],
                                   "notes.pt: a text file, not a checkpoint"),
        "NaN box in the store": (nan_data, [], "image 'train_"),
        "captions .ids not UTF-8": (ids_data, [], f"{ids}: line 7: not UTF-8"),
        "dict.txt not UTF-8": (dict_data, [], f"{os.path.join(dict_data, 'dict.txt')}: line {n_dict}: not UTF-8"),
        "--save-dir under a file": (data, [], f"{tmp_path / 'afile' / 'ck'}: {tmp_path / 'afile'} is a file"),
    }
    for k, (name, (d, flags, needle)) in enumerate(cases.items()):
        save = str(tmp_path / "afile" / "ck") if name == "--save-dir under a file" else _place(tmp_path / f"ck{k}")
        argv = _train_argv(d, save, *flags)
        monkeypatch.setattr(sys, "argv", ["fairseq-train", *argv])  # the excepthook reads the task from it
        args = options.parse_args_and_arch(options.get_training_parser(), argv)
        with pytest.raises(Exception) as e:
            train.main(convert_namespace_to_omegaconf(args))
        line = one_line(e.value)
        assert line is not None and needle in line and "\n" not in line, (name, line, repr(e.value)[:2000])
        if os.path.isdir(save):
            _as_it_was(save)


# ---- every console script, the same classes --------------------------------------------------------
# (script, argv, needle): {x} are the files below, {data}/{spm}/{dict}/{ck} the tiny world's and a checkpoint
VOCAB = ["--out", "{out}", "--spm", "{spm}", "--dict", "{dict}"]
IGLUE = ["--lang", "en", "--split", "test", *VOCAB, "--regions", "{data}/regions/test.json"]
SWEEP = {
    "m3p-make-world": [
        (["{afile}/world", "--quiet"], "{afile} is a file, not a folder")],
    "m3p-build-spm": [
        (["{out}", "{missing}"], "{missing}: raw text file not found"),
        (["{out}", "{adir}"], "{adir}: a folder, where the raw text file is expected"),
        (["{out}", "{empty}"], "{empty}: sentencepiece cannot train on this text"),
        (["{out}", "{latin1}"], "{latin1}: line 1: not UTF-8"),
        (["{afile}", "{text}"], "{afile}: cannot write here: a file, where a folder is to be written")],
    "m3p-binarize": [
        (["--train", "{text}", *VOCAB, "--spm", "{missing}"], "{missing}: sentencepiece model not found"),
        (["--train", "{text}", *VOCAB, "--spm", "{garbage}"], "{garbage}: not a sentencepiece model"),
        (["--train", "{text}", *VOCAB, "--dict", "{garbage}"], "{garbage}: not a fairseq dict.txt"),
        (["--train", "{text}", *VOCAB, "--dict", "{latin1}"], "{latin1}: line 1: not UTF-8"),
        (["--train", "{adir}", *VOCAB], "{adir}: a folder, where the raw text"),
        (["--train", "{empty}", *VOCAB], "{empty}: no lines")],
    "m3p-prepare-world": [
        (["{missing}", "{out}"], "{missing}/raw: no world text or captions")],
    "m3p-import-dataset": [
        (["cc", "--train", "{missing}", *VOCAB], "{missing}: no such file"),
        (["cc", "--train", "{adir}", *VOCAB], "{adir}: a folder, where a file"),
        (["cc", "--train", "{empty}", *VOCAB], "nothing to write: no lines read"),
        (["cc", "--train", "{latin1}", *VOCAB], "{latin1}: line 1: not UTF-8"),
        (["cc", "--train", "{gz_cut}", *VOCAB], "{gz_cut}: damaged or truncated gzip"),
        (["coco", "{garbage}", *VOCAB], "{garbage}: not JSON"),
        (["tmx", "--pair", "en-de", "--train", "{empty}", *VOCAB], "{empty}: line 1, column 1: not well-formed XML"),
        (["wiki", "{text}", *VOCAB, "--out", "{afile}"], "{afile}: cannot write here"),
        (["muse", "{missing}", "--out", "{out}"], "{missing}: expected a MUSE file name")],
    "m3p-import-regions": [
        (["tsv", "{missing}", "{out}/train.json", "--quiet"], "{missing}: TSV file not found"),
        (["tsv", "{adir}", "{out}/train.json", "--quiet"], "{adir}: a folder, where the TSV file is expected"),
        (["tsv", "{empty}", "{out}/train.json", "--quiet"], "{empty}: no images"),
        (["hdf5", "{garbage}", "{out}/train.json", "--quiet"], "{garbage}: not an HDF5 file"),
        (["npz", "{missing}", "{out}/train.json", "--quiet"], "{missing}: .npz file not found"),
        (["mmf", "{afile}", "{out}/train.json", "--quiet"], "{afile}: not a folder"),
        (["hdf5", "{garbage}", "{afile}/train.json", "--quiet"], "{afile}/train.json: cannot write here")],
    "m3p-merge-manifests": [
        (["{out}/m.json", "{missing}"], "{missing}: cannot read the region manifest"),
        (["{out}/m.json", "{garbage}"], "{garbage}: not a JSON region manifest"),
        (["{adir}", "{data}/regions/test.json"], "{adir}: cannot write here: a folder")],
    "m3p-import-iglue": [
        (["xvnli", "{missing}", *IGLUE], "{missing}: no such file"),
        (["xvnli", "{adir}", *IGLUE], "{adir}: a folder, where a file is expected"),
        (["xvnli", "{empty}", *IGLUE], "{empty}: no examples"),
        (["xvnli", "{garbage}", *IGLUE], "{garbage}: line 1: "),
        (["xvnli", "{latin1}", *IGLUE], "{latin1}: line 1: not UTF-8"),
        (["xvnli", "{text}", *IGLUE[:4], "--out", "{afile}", *IGLUE[6:]], "{afile}: cannot write here")],
    "m3p-import-xlmr": [
        (["{missing}", "{out}"], "{missing}: not a folder"),
        (["{tar}", "{out}"], "{tar}: a tar archive (the download as it is), not a model folder")],
    "m3p-import-m3p": [
        (["{missing}", "{out}", "--spm", "{spm}"], "{missing}: checkpoint not found"),
        (["{adir}", "{out}", "--spm", "{spm}"], "{adir}: a folder, where the checkpoint is expected"),
        (["{empty}", "{out}", "--spm", "{spm}"], "{empty}: an empty file, not a checkpoint"),
        (["{tar}", "{out}", "--spm", "{spm}"], "{tar}: a gzip-compressed tar archive")],
    "m3p-retrieval-eval": [
        (["{missing}", "--path", "{ck}", "--cpu"], "{missing}: data folder not found"),
        (["{data}", "--path", "{adir}", "--cpu"], "{adir}: a folder, not a checkpoint file"),
        (["{data}", "--path", "{empty}", "--cpu"], "{empty}: an empty file, not a checkpoint"),
        (["{data}", "--path", "{ck}", "--cpu", "--results", "{garbage}"], "{garbage}: not valid JSON"),
        (["{data}", "--path", "{ck}", "--cpu", "--merge", "{empty}"], "{empty}: not a scores file")],
    "m3p-downstream-eval": [
        (["xnli", "{data}", "--path", "{ck}", "--cpu", "--results", "{afile}/r.json"],
         "{afile}/r.json: cannot write here"),
        (["generate", "{data}", "--path", "{missing}", "--targets", "de", "--cpu"], "{missing}: checkpoint not found"),
        (["generate", "{data}", "--path", "{ck}", "--targets", "de", "--cpu", "--hyps-dir", "{afile}"],
         "{afile}: cannot write here: a file, where a folder")],
    "m3p-caption-score": [
        (["--hyp", "{missing}", "--ref", "{text}"], "{missing}: hypothesis file not found"),
        (["--hyp", "{text}", "--ref", "{adir}"], "{adir}: a folder, where the reference file is expected"),
        (["--hyp", "{empty}", "--ref", "{text}"], "{empty}: empty hypothesis file"),
        (["--hyp", "{text}", "--ref", "{text}", "--results", "{badjson}", "--key", "retrieval.zero_shot.en.mR.x"],
         "{badjson}: retrieval.zero_shot.en.mR holds 'high', not an object")],
    "m3p-results-table": [
        (["{missing}"], "{missing}: results file not found"),
        (["{adir}"], "{adir}: a folder, where the results file is expected"),
        (["{empty}"], "{empty}: not valid JSON"),
        (["{badjson}"], "{badjson}: retrieval.zero_shot.en.mR: expected a number")],
    "m3p-plots": [
        (["--results", "{missing}", "--out", "{out}"], "{missing}: results file not found"),
        (["--results", "{garbage}", "--out", "{out}"], "{garbage}: not valid JSON"),
        (["--train-log", "{adir}", "--out", "{out}"], "{adir}: a folder, where the training log is expected"),
        (["--train-log", "{text}", "--out", "{afile}"], "{afile}: cannot write here")],
}


def _console_mains():
    """script name -> its main, from setup.py's entry points (every console script is swept)."""
    import importlib
    import re

    setup = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")).read()
    return {name: getattr(importlib.import_module(module), func)
            for name, module, func in re.findall(r'"(m3p-[\w-]+) = ([\w.]+):(\w+)"', setup)}


def test_every_console_script_is_swept():
    assert sorted(_console_mains()) == sorted(SWEEP)


@pytest.fixture(scope="module")
def sweep_files(tiny_world, tiny_checkpoint, not_checkpoints, tmp_path_factory):
    base = tmp_path_factory.mktemp("sweep")
    (base / "afile").write_text("x\n")
    (base / "adir").mkdir()
    (base / "empty").write_text("")
    (base / "garbage").write_bytes(b"\x00\x01garbage\x00")
    (base / "latin1").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (base / "text").write_text("a red dog\ta\n" * 3)
    (base / "badjson").write_text(json.dumps({"retrieval": {"zero_shot": {"en": {"mR": "high"}}}}))
    with gzip.open(str(base / "full.gz"), "wt") as f:
        f.writelines(f"caption {i} {i * 7919 % 10007}\thttp://x/{i}\n" for i in range(5000))
    cut = open(str(base / "full.gz"), "rb").read()
    (base / "gz_cut").write_bytes(cut[: len(cut) // 2])
    names = {n: str(base / n) for n in ("afile", "adir", "empty", "garbage", "latin1", "text", "badjson")}
    return dict(names, gz_cut=str(base / "gz_cut"), missing=str(base / "missing"), data=tiny_world["data"],
                spm=os.path.join(tiny_world["data"], "sentencepiece.bpe.model"),
                dict=os.path.join(tiny_world["data"], "dict.txt"), ck=tiny_checkpoint,
                tar=os.path.join(not_checkpoints["path"], "xlmr.base.tar.gz"))


@pytest.mark.parametrize("script,k", [(s, k) for s, cases in SWEEP.items() for k in range(len(cases))])
def test_console_script_bad_input(script, k, sweep_files, tmp_path):
    """Missing file, a folder given for a file, an empty file, a file of another format, an output place
    that cannot be written: one line naming the file, and nothing left in the output place."""
    argv, needle = SWEEP[script][k]
    names = dict(sweep_files, out=str(tmp_path / "out" / "deep"))
    _refused(_console_mains()[script], [a.format(**names) for a in argv], needle.format(**names))
    assert not os.path.exists(tmp_path / "out")  # not even the folders on the way to the output
