"""Shared fixtures: a tiny embedded world, prepared once per test session."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
BIN = os.path.dirname(sys.executable)

import m3p_fairseq  # noqa: E402,F401  (registers tasks, models, criterions)


def run(cmd, cwd=None, env=None, check=True, timeout=900):
    """Run a command line (list); returns CompletedProcess with text output."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=ROOT)
    full_env["PATH"] = BIN + os.pathsep + full_env.get("PATH", "")
    if env:
        full_env.update(env)
    res = subprocess.run(cmd, cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def padded_text_batch(dictionary, seed=0):
    """3 x 9 random token ids, ``<s> ... </s>``, the second row ending in 3 pads: (tokens, non-pad mask)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(dictionary.nspecial, len(dictionary) - 1, (3, 9), generator=g)
    tokens[:, 0], tokens[:, -1] = dictionary.bos(), dictionary.eos()
    tokens[1, -3:] = dictionary.pad()
    return tokens, tokens.ne(dictionary.pad())


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """World + data folder: 32-d features, 240 training images, 24 test images, small text corpus."""
    from preprocess.make_world import main as make_world
    from preprocess.prepare_world import prepare

    base = tmp_path_factory.mktemp("world")
    world, data = str(base / "world"), str(base / "data")
    make_world([world, "--seed", "3", "--feat-dim", "32", "--train-images", "240", "--valid-images", "24",
                "--test-images", "24", "--text-sentences", "1500", "--quiet"])
    prepare(world, data, vocab_size=400, progress=False)
    return {"world": world, "data": data}


@pytest.fixture(scope="session")
def task(tiny_world):
    from fairseq import tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq import options

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [tiny_world["data"], "--task", "multitask_multimodal", "--arch",
                                                "m3p_tiny", "--criterion", "m3p_pretrain", "--cpu"])
    cfg = convert_namespace_to_omegaconf(args)
    return tasks.setup_task(cfg.task), cfg
