"""IGLUE examples as model input: a text with one image (XVNLI, xGQA) or two (MaRVL), and a target.

Written here because no fairseq dataset pairs text with region features. The side file that the
importer writes beside each binarized text (``{split}.jsonl``, one JSON object per text line) says
which images a line goes with and what its target is:

    {"id": "2487069642.jpg#1r1e", "images": ["2487069642"], "label": 2}            a class
    {"id": "201307251", "images": ["n161313"], "labels": [17], "scores": [1.0]}      soft answer scores
    {"id": "dev-850-0-0", "images": ["dev-850-0-img0", "dev-850-0-img1"], "label": 1}

A batch of B examples with K images each is B x K rows, example i in rows K*i .. K*i+K-1: the text
repeated with each of its images, every image read once (volta's NLVR2 batches: the statement
encoded with each image separately). Soft targets are a B x A matrix of answer scores.

The jobs (``IGLUE_JOBS``) and ``iglue_dataset`` are the one reader of this data, for the IGLUE tasks
(tasks/iglue.py) and for the objectives of the same names (objectives.py: fine-tuning with pre-training
objectives kept on beside, multitask_multimodal ``--objectives xvnli,tcl``).
"""
import json
import os
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
from fairseq.data import ConcatDataset, PrependTokenDataset

from ..errors import M3PDataError
from .region_dataset import RegionDataset, text_image_input
from .region_store import RegionDataError
from .sized import SizeOrderedDataset

CLASS, SOFT = "class", "soft"  # target kinds
ANSWERS_FILE = "answers.txt"  # DATA/xgqa/answers.txt: an answer vocabulary, one answer a line, in label order


@dataclass(frozen=True)
class IGLUEJob:
    """One of IGLUE's understanding jobs: its name (the folder under DATA, the head's, the objective's and the
    results' name), its head (models/iglue_heads.py), its target, images per example and class names (none:
    the answer vocabulary in DATA/{name}/answers.txt)."""

    name: str
    head_kind: str
    target: str = CLASS
    images_per_example: int = 1
    classes: Tuple[str, ...] = ()

    def folder(self, data_path, lang=None):
        base = os.path.join(data_path, self.name)
        return base if lang is None else os.path.join(base, lang)

    def labels(self, data_path):
        """The class names, or the answer vocabulary ``DATA/{name}/answers.txt`` (one line naming it if missing)."""
        if self.classes:
            return self.classes
        path = os.path.join(self.folder(data_path), ANSWERS_FILE)
        if not os.path.exists(path):
            raise M3PDataError(f"{path}: the {self.name} answer vocabulary is missing (m3p-import-iglue {self.name} "
                               f"--answers writes it)")
        with open(path, encoding="utf-8") as f:
            labels = tuple(line.rstrip("\n") for line in f)
        if not labels:
            raise M3PDataError(f"{path}: no answers")
        return labels


XVNLI = IGLUEJob("xvnli", "classes", classes=("contradiction", "neutral", "entailment"))  # volta's LABEL_MAP order
XGQA = IGLUEJob("xgqa", "answers", target=SOFT)
MARVL = IGLUEJob("marvl", "pair", images_per_example=2, classes=("false", "true"))
IGLUE_JOBS = {job.name: job for job in (XVNLI, XGQA, MARVL)}


def langs_with(task, job, split):
    """The languages that have ``split`` of ``job`` in the task's data (sorted), else one line naming the folder."""
    base = job.folder(task.data_path())
    langs = sorted(d for d in os.listdir(base) if os.path.exists(os.path.join(base, d, f"{split}.jsonl"))) \
        if os.path.isdir(base) else []
    if not langs:
        raise M3PDataError(f"{base}: no language has a {split!r} split (m3p-import-iglue {job.name} writes them)")
    return langs


def iglue_examples(task, job, labels, lang, split, seed=1):
    """The IGLUEDataset of one language's split of ``job``, every line checked (text, image ids, target);
    ``task`` is any M3P task over the data folder (its dictionary, region stores, text checks, and the
    code-switching of English training texts with --code-switch, under ``seed``)."""
    folder = job.folder(task.data_path(), lang)
    prefix = os.path.join(folder, split)
    side_path = prefix + ".jsonl"
    if not os.path.exists(side_path):
        have = ", ".join(sorted(f[:-6] for f in os.listdir(folder) if f.endswith(".jsonl"))) \
            if os.path.isdir(folder) else "none"
        raise M3PDataError(f"{side_path}: no {job.name} {split} split for language {lang!r} (have: {have})")
    texts = task.load_tokens(prefix, f"{lang} {split} {job.name} texts")
    task.check_text(prefix, texts, "text")
    num_answers = len(labels) if job.target == SOFT else None
    side = SideFile(side_path, job.images_per_example, job.target, num_answers)
    if len(side) != len(texts):
        raise M3PDataError(f"{side_path}: {len(side)} lines for {len(texts)} texts in {prefix}.bin")
    if job.target == CLASS and len(side) and not (0 <= side.labels.min() and side.labels.max() < len(labels)):
        bad = int(np.nonzero((side.labels < 0) | (side.labels >= len(labels)))[0][0])
        raise M3PDataError(f"{side_path}: line {bad + 1}: label {side.labels[bad]} is not one of 0..{len(labels) - 1}")
    try:
        store = task.region_store(split, lang)
        rows = store.indices_of(side.image_ids.reshape(-1), source=side_path).reshape(side.image_ids.shape)
    except RegionDataError as e:
        raise M3PDataError(str(e))
    # <s> text </s>, as XLM-R reads a sentence
    texts = task.code_switched(PrependTokenDataset(texts, task.dictionary.bos()), lang, split, seed)
    return IGLUEDataset(texts, rows, task.region_dataset(split, lang), side, task.dictionary.pad(), job.target,
                        num_answers)


def iglue_dataset(task, job, labels, split, langs, seed=1):
    """``split`` of ``job`` in each of ``langs``, concatenated (languages may have region stores of their own:
    each part reads its regions, and a batch's items carry them)."""
    parts = [iglue_examples(task, job, labels, lang, split, seed) for lang in langs]
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def side_record(example_id, images, label=None, answers=None):
    """One line of a side file: the example's id, its image ids and its class ``label`` or its soft
    ``answers`` ({answer label: score})."""
    rec = {"id": str(example_id), "images": [str(i) for i in images]}
    if answers is None:
        rec["label"] = int(label)
    else:
        rec["labels"], rec["scores"] = [int(k) for k in answers], [float(v) for v in answers.values()]
    return json.dumps(rec, ensure_ascii=False)


class SideFile:
    """The parsed side file of one split: image ids (N x K), and class labels (N,) or soft answer scores
    held as flat arrays (``offsets`` into ``answer_labels`` / ``answer_scores``)."""

    def __init__(self, path, images_per_example, target, num_answers=None):
        self.path = path
        ids, labels, offsets, answer_labels, answer_scores = [], [], [0], [], []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                where = f"{path}: line {n}"
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    raise M3PDataError(f"{where}: not JSON ({e})")
                images = rec.get("images") if isinstance(rec, dict) else None
                if not isinstance(images, list) or len(images) != images_per_example:
                    raise M3PDataError(f"{where}: expected {images_per_example} image id(s) under 'images', found "
                                       f"{images!r}")
                ids.append([str(i) for i in images])
                if target == CLASS:
                    if not isinstance(rec.get("label"), int):
                        raise M3PDataError(f"{where}: no class 'label'")
                    labels.append(rec["label"])
                else:
                    lab, sc = rec.get("labels"), rec.get("scores")
                    if not isinstance(lab, list) or not isinstance(sc, list) or len(lab) != len(sc) or not lab:
                        raise M3PDataError(f"{where}: expected answer 'labels' and 'scores' of one length")
                    if num_answers is not None and not all(isinstance(k, int) and 0 <= k < num_answers for k in lab):
                        raise M3PDataError(f"{where}: answer label outside the {num_answers}-answer vocabulary")
                    answer_labels += lab
                    answer_scores += sc
                    offsets.append(len(answer_labels))
        self.image_ids = np.array(ids, dtype=object).reshape(-1, images_per_example)
        self.labels = np.asarray(labels, dtype=np.int64) if target == CLASS else None
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.answer_labels = np.asarray(answer_labels, dtype=np.int64)
        self.answer_scores = np.asarray(answer_scores, dtype=np.float32)

    def __len__(self):
        return len(self.image_ids)

    def answers_of(self, i):
        """(answer labels, scores) of example i (soft targets)."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.answer_labels[a:b], self.answer_scores[a:b]


class IGLUEDataset(SizeOrderedDataset):
    """Example i: ``texts[i]`` (``<s> ... </s>``) with the images at ``image_rows[i]`` (K rows of
    ``regions.store``) and its target from ``side``.

    ``sizes`` are text lengths (what the model numbers with positions, and what fairseq filters by
    --tokens-per-sample); an example costs its K rows of text + regions for batching by tokens.
    """

    def __init__(self, texts, image_rows, regions: RegionDataset, side: SideFile, pad_idx, target, num_answers=None):
        image_rows = np.asarray(image_rows, dtype=np.int64)
        if not (len(texts) == len(image_rows) == len(side)):
            raise ValueError(f"{len(texts)} texts, {len(image_rows)} image rows, {len(side)} targets")
        if target not in (CLASS, SOFT) or (target == SOFT and not num_answers):
            raise ValueError("target is 'class', or 'soft' with num_answers")
        self.texts, self.regions, self.side, self.pad_idx = texts, regions, side, pad_idx
        self.image_rows, self.target, self.num_answers = image_rows, target, num_answers
        self._sizes = np.asarray(texts.sizes, dtype=np.int64)
        n_regions = np.minimum(regions.store.num_regions[image_rows], regions.max_regions)
        self._tokens = self._sizes * image_rows.shape[1] + n_regions.sum(axis=1)

    def __len__(self):
        return len(self.texts)

    def num_tokens(self, index):
        return int(self._tokens[index])

    def num_tokens_vec(self, indices):
        return self._tokens[indices]

    @property
    def images_per_example(self):
        return self.image_rows.shape[1]

    def __getitem__(self, index):
        item = {"id": index, "text": self.texts[index],
                "images": [self.regions.get_row(int(r)) for r in self.image_rows[index]]}
        if self.target == CLASS:
            item["label"] = int(self.side.labels[index])
        else:
            item["answers"] = self.side.answers_of(index)
        return item

    def collater(self, samples):
        if len(samples) == 0:
            return {}
        k = self.images_per_example
        texts = [s["text"] for s in samples for _ in range(k)]  # example i -> rows k*i .. k*i+k-1
        if self.target == CLASS:
            target = torch.LongTensor([s["label"] for s in samples])
        else:
            target = torch.zeros(len(samples), self.num_answers)
            for i, s in enumerate(samples):
                labels, scores = s["answers"]
                target[i, torch.from_numpy(labels)] = torch.from_numpy(scores)
        return {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": int(sum(len(t) for t in texts)),
            "net_input": text_image_input(texts, [im for s in samples for im in s["images"]], self.pad_idx),
            "target": target,
        }
