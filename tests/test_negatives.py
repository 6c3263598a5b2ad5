"""Negative pairs need captions of two images: a caption file whose every caption belongs to one
image is refused up front, in one line naming it, by VLM pre-training and retrieval fine-tuning
(VLM negative sampling used to loop forever on it)."""
import os
import shutil

import numpy as np
import pytest

from m3p_fairseq.errors import M3PInputError


def _one_image_data(tiny_world, tmp_path):
    """The tiny world's data, except that every English training caption names the same image."""
    data = str(tmp_path / "data")
    shutil.copytree(tiny_world["data"], data, symlinks=True)
    ids = os.path.join(data, "captions", "en", "train.ids")
    n = sum(1 for _ in open(ids, encoding="utf-8"))
    with open(ids, "w", encoding="utf-8") as f:
        f.write("train_000003\n" * n)
    return data, ids


def _task(data, *argv):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), [data, "--arch", "m3p_tiny", "--cpu", *argv])
    return tasks.setup_task(convert_namespace_to_omegaconf(args).task)


@pytest.mark.parametrize("argv", [
    ["--task", "multitask_multimodal", "--criterion", "m3p_pretrain", "--objectives", "vlm",
     "--caption-langs", "en"],
    ["--task", "multitask_multimodal", "--criterion", "m3p_pretrain", "--objectives", "xmlm,mmlm,mrm,vlm",
     "--objective-ratios", "1,1,1,1", "--caption-langs", "en,de"],
    ["--task", "m3p_retrieval", "--criterion", "m3p_retrieval", "--caption-langs", "en,de"],
])
def test_captions_of_one_image_are_refused_by_the_task(tiny_world, tmp_path, argv):
    data, ids = _one_image_data(tiny_world, tmp_path)
    task = _task(data, *argv)
    with pytest.raises(M3PInputError) as e:
        task.load_dataset("train")
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{ids}: every caption belongs to image 'train_000003'")


def test_objectives_without_negatives_still_take_them(tiny_world, tmp_path):
    # MMLM and MRM draw no negatives: one image is a (poor) but valid training set for them
    data, _ = _one_image_data(tiny_world, tmp_path)
    task = _task(data, "--task", "multitask_multimodal", "--criterion", "m3p_pretrain", "--objectives", "mmlm,mrm",
                 "--objective-ratios", "1,1", "--caption-langs", "en")
    task.load_dataset("train")
    assert len(task.datasets["train"]) > 0


def test_retrieval_text_negative_of_a_dominant_image(tiny_world, task):
    """An image with all but one caption of its group: the text negative is that one caption (the
    sampler gave up with an error after 1,000 draws)."""
    from m3p_fairseq.data.retrieval_dataset import TEXT_REPLACED, RetrievalDataset

    from fairseq.data import ConcatDataset

    t, _ = task
    captions = ConcatDataset([t.load_captions("en", "train")[0]] * 20)  # thousands: 1,000 draws rarely hit one
    rows = np.zeros(len(captions), dtype=np.int64)
    rows[-1] = 1
    ds = RetrievalDataset(captions, rows, np.zeros(len(captions)), t.region_dataset("train"), t.dictionary.pad(),
                          num_negatives=3, text_negative_prob=1.0)
    assert [c for c, _, kind in ds.sample_pairs(0) if kind == TEXT_REPLACED] == [len(captions) - 1] * 3
