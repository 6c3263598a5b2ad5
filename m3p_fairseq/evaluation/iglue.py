"""IGLUE's evaluation: accuracy of XVNLI / xGQA / MaRVL, R@1 of xFlickr&CO / WIT, per language, IGLUE's
averages over the non-English languages, and the chance / majority-answer level beside them.

    m3p-downstream-eval iglue xvnli DATA --path ckpt.pt --langs en,ar,es,fr,ru --results R.json
    m3p-downstream-eval iglue xflickrco DATA --path ckpt.pt --langs en,de,es,id,ja,ru,tr,zh --results R.json
    m3p-downstream-eval iglue marvl DATA --path ckpt.pt --split test_mt --langs id,sw --results R.json  # translate-test

Results (``results.py``; the key defaults to ``iglue.{job}``, ``iglue_translate_test.{job}`` for a
``test_mt`` split)::

    "iglue": {"xvnli": {"en": {"acc": 76.9, "n": 1164}, "ar": {...}, "avg": {"acc": 58.3, "langs": "ar,es,fr,ru"},
                        "chance": 33.33},
              "xgqa": {..., "majority": 20.1, "majority_answer": "no"},
              "xflickrco": {"en": {"ir_r1": 31.4, "tr_r1": 24.6, "mR": ..., "num_images": 2000}, ..., "chance_r1": 0.05}}

``avg`` is recomputed from every language the section holds (runs for other languages included) but
English, as IGLUE averages (e-bug/iglue issue 1). Retrieval is IGLUE's: the cross-encoder scores every
(image, caption) pair of a language's split (xFlickr&CO and WIT have one caption per test image);
image retrieval (IR, ``ir_r1``) ranks the images for each caption, text retrieval (TR, ``tr_r1``) the
captions for each image; ``mR`` is the mean of R@1/5/10 both ways, as the project's retrieval reports.
``accuracy`` and ``retrieval_recall`` take a model and a dataset, for any caller (validation included).
"""
import os

import numpy as np
import torch

from ..data.iglue_dataset import IGLUE_JOBS, SOFT, SideFile
from ..errors import M3PInputError
from ..objectives import iglue_logits, num_correct
from ..tasks.iglue import iglue_task_of
from .results import load_results, set_result, write_results
from .retrieval import chance_recall, language_split, merge_shards, recall_at_k, score_pairs

RETRIEVAL_JOBS = ("xflickrco", "wit")
CLASSIFICATION_JOBS = tuple(IGLUE_JOBS)  # tasks/iglue.py: m3p_{job}
JOBS = CLASSIFICATION_JOBS + RETRIEVAL_JOBS
ENGLISH = "en"


@torch.no_grad()
def accuracy(model, task, dataset, batch_size=64, device="cpu", progress=None):
    """{"acc", "n"} of an IGLUE task's head on ``dataset`` (an IGLUEDataset): exact match, or the arg-max
    answer's score for soft targets (criterions/iglue.py)."""
    model.eval()
    itr = task.get_batch_iterator(dataset, max_sentences=batch_size, seed=1).next_epoch_itr(shuffle=False)
    correct, total = 0.0, 0
    for sample in (progress(itr) if progress else itr):
        net_input = {k: v.to(device) for k, v in sample["net_input"].items()}
        logits = iglue_logits(model, task.head_name, net_input).float().cpu()
        correct += float(num_correct(logits, sample["target"]))
        total += len(sample["target"])
    return {"acc": round(100.0 * correct / max(total, 1), 2), "n": total}


@torch.no_grad()
def retrieval_recall(model, captions, caption_image, images, pad_idx, batch_size=256, device="cpu", progress=None):
    """IGLUE's retrieval numbers for one language from the cross-encoder's score of every (image, caption)
    pair: ``ir_r1`` (text -> image), ``tr_r1`` (image -> text), R@5/10 and mR, and the chance of R@1."""
    ids, scores = score_pairs(model, captions, images, pad_idx, batch_size, device=device, progress=progress)
    matrix, _ = merge_shards([(ids, scores)], len(images), len(captions))
    m = recall_at_k(matrix, caption_image)
    chance = chance_recall(caption_image, len(images))
    return {"ir_r1": m["t2i_r1"], "tr_r1": m["i2t_r1"], **m, "num_images": len(images), "num_captions": len(captions),
            "chance_r1": round(chance["t2i_r1"], 4)}


def _side(task, lang, split):
    path = os.path.join(task.folder(lang), f"{split}.jsonl")
    return SideFile(path, task.images_per_example, SOFT, task.num_answers()) if os.path.exists(path) else None


def majority(task, langs, split, train_split="train"):
    """xGQA's majority-answer level: the answer with the largest summed score in English training (else in
    the evaluated splits themselves), and its mean score over the evaluated examples, in percent."""
    evaluated = [f for f in (_side(task, lang, split) for lang in langs) if f is not None]
    train = _side(task, ENGLISH, train_split)
    totals = np.zeros(task.num_answers())
    for f in [train] if train is not None else evaluated:
        np.add.at(totals, f.answer_labels, f.answer_scores)
    answer = int(np.argmax(totals))
    n = sum(len(f) for f in evaluated)
    level = sum(float(f.answer_scores[f.answer_labels == answer].sum()) for f in evaluated) / max(n, 1)
    return {"majority": round(100.0 * level, 2), "majority_answer": task.labels[answer],
            "majority_from": f"{train_split}.{ENGLISH}" if train is not None else "the evaluated splits"}


def fine_tuned_for(job, task, checkpoint="the checkpoint"):
    """The task that evaluates ``job`` with the checkpoint's model: for a classification job, its IGLUE task over
    the checkpoint's data (tasks/iglue.py ``iglue_task_of``: the checkpoint's own task, or the job's task when it
    was trained as an objective beside others); retrieval reads captions through any task."""
    if job in CLASSIFICATION_JOBS:
        return iglue_task_of(job, task, checkpoint)
    return task


def langs_with(job, task, split):
    """The languages that have ``split`` for ``job``: the task folder's (tasks/iglue.py), or the captions'."""
    if job in CLASSIFICATION_JOBS:
        return fine_tuned_for(job, task).langs_with(split)
    folder = os.path.join(task.data_path(), "captions")
    langs = sorted(d for d in os.listdir(folder) if os.path.exists(os.path.join(folder, d, f"{split}.ids"))) \
        if os.path.isdir(folder) else []
    if not langs:
        raise M3PInputError(f"{folder}: no language has a {split!r} split (m3p-import-iglue {job} writes them)")
    return langs


def evaluate(job, model, task, langs, split="test", batch_size=64, device="cpu", progress=None):
    """{lang: metrics} of one IGLUE job on ``split`` of each language, plus its task-wide levels
    (``chance``; xGQA's ``majority``; retrieval's ``chance_r1``)."""
    if job not in JOBS:
        raise M3PInputError(f"unknown IGLUE job {job!r}; expected one of {', '.join(JOBS)}")
    out = {}
    if job in RETRIEVAL_JOBS:
        pad = task.source_dictionary.pad()
        for lang in langs:
            captions, caption_image, images = language_split(task, lang, split)
            out[lang] = retrieval_recall(model, captions, caption_image, images, pad, batch_size, device,
                                         progress(f"{job} {lang}") if progress else None)
        chances = {m["chance_r1"] for m in out.values()}
        if len(chances) == 1:
            out["chance_r1"] = chances.pop()
        return out
    task = fine_tuned_for(job, task)
    for lang in langs:
        name = f"{split}.{lang}"
        task.load_dataset(name)
        out[lang] = accuracy(model, task, task.dataset(name), batch_size, device,
                             progress(f"{job} {lang}") if progress else None)
    if IGLUE_JOBS[job].classes:  # one of fixed classes at random; xGQA's level is its majority answer's
        out["chance"] = round(100.0 / len(IGLUE_JOBS[job].classes), 2)
    else:
        out.update(majority(task, langs, split))
    return out


def line(job, lang, m):
    if "acc" in m:
        return f"{job} {lang}: accuracy {m['acc']:.2f} ({m['n']} examples)"
    return (f"{job} {lang}: IR R@1 {m['ir_r1']:.2f}  TR R@1 {m['tr_r1']:.2f}  mR {m['mR']:.2f}  "
            f"({m['num_images']} images, {m['num_captions']} captions; chance R@1 {m['chance_r1']:.2f})")


METRICS = ("acc", "ir_r1", "tr_r1", "mR")


def average(section):
    """IGLUE's average of a section {lang: metrics}: each metric's mean over the languages but English."""
    langs = sorted(l for l, m in section.items() if isinstance(m, dict) and l not in (ENGLISH, "avg"))
    avg = {k: round(float(np.mean([section[l][k] for l in langs])), 2) for k in METRICS
           if langs and all(k in section[l] for l in langs)}
    return dict(avg, langs=",".join(langs)) if avg else None


def save(path, key, metrics, staging=None):
    """Merge ``metrics`` under ``key`` and recompute the section's ``avg`` over every language it now holds.
    ``staging``: an outputs.Staging the file joins (default: written at once)."""
    doc = set_result(path, load_results(path), key, metrics)
    node = doc
    for part in key.split("."):
        node = node[part]
    avg = average(node)
    if avg is not None:
        set_result(path, doc, f"{key}.avg", avg)
    write_results(path, doc, staging)


def final_validation(path):
    """The validation score fairseq saved with a checkpoint (``--best-checkpoint-metric`` at its last
    validation), or None."""
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    return (state.get("extra_state") or {}).get("val_loss")


if __name__ == "__main__":  # python -m m3p_fairseq.evaluation.iglue best CKPT... (iglue.sh's few-shot lr choice)
    import sys

    if len(sys.argv) < 3 or sys.argv[1] != "best":
        sys.exit("usage: python -m m3p_fairseq.evaluation.iglue best CHECKPOINT [CHECKPOINT ...]")
    scored = [(final_validation(p), p) for p in sys.argv[2:]]
    missing = [p for v, p in scored if v is None]
    if missing:
        sys.exit(f"iglue best: {missing[0]}: no validation score saved (train with validation and "
                 f"--best-checkpoint-metric)")
    value, best = max(scored, key=lambda vp: vp[0])  # the metrics compared here are maximized (accuracy)
    print(f"{best}\t{value}")
