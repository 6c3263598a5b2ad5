"""IGLUE's understanding tasks on the M3P understanding model: one registered task per job, sharing a base.

    fairseq-train DATA --user-dir m3p_fairseq --task m3p_xvnli --criterion m3p_iglue --arch m3p_base \\
        --pretrained-checkpoint m3p.pt --valid-subset valid --best-checkpoint-metric accuracy \\
        --maximize-best-checkpoint-metric ...
    fairseq-validate DATA --user-dir m3p_fairseq --task m3p_xvnli --criterion m3p_iglue \\
        --path checkpoint_best.pt --valid-subset test.ar,test.es,test.fr,test.ru

| task | IGLUE job | images | target | head (models/iglue_heads.py) |
|---|---|---|---|---|
| ``m3p_xvnli`` | SNLI-VE -> XVNLI, visual entailment | 1 | contradiction=0 / neutral=1 / entailment=2 | ``classes`` |
| ``m3p_xgqa`` | GQA -> xGQA, visual question answering | 1 | soft scores over the answer vocabulary | ``answers`` |
| ``m3p_marvl`` | NLVR2 -> MaRVL, reasoning over two images | 2 | false=0 / true=1 | ``pair`` |

Data (``m3p-import-iglue`` writes it from IGLUE's published files; one DATA folder per task)::

    DATA/dict.txt, DATA/sentencepiece.bpe.model
    DATA/{task}/{lang}/{split}.{bin,idx}     the texts (hypothesis, question, statement), binarized
    DATA/{task}/{lang}/{split}.jsonl         per text line: its image id(s) and target (data/iglue_dataset.py)
    DATA/xgqa/answers.txt                    xGQA: the answer vocabulary, one answer a line, in label order
    DATA/regions/{split}.{lang}.json         the split's region store for that language, else regions/{split}.json

Splits: ``train``, ``valid`` (IGLUE's dev), ``test``, few-shot ``train_{shots}`` (xGQA's target-language
dev is that language's ``valid``), translate-test ``test_mt``. As in the other tasks a split may
name its languages (``test.de``, ``valid.en+de``); a plain ``train*`` split reads --train-langs, any
other plain split every language that has it (or --eval-langs). The retrieval jobs (Flickr30K ->
xFlickr&CO, WIT) are the ``m3p_retrieval`` task on ``captions/`` (see ``evaluation/iglue.py``).
"""
import logging
import os
from dataclasses import dataclass, field

import numpy as np
from fairseq.data import ConcatDataset, PrependTokenDataset
from fairseq.tasks import register_task

from ..checkpoints import UNDERSTANDING
from ..data.iglue_dataset import CLASS, SOFT, IGLUEDataset, SideFile
from ..data.region_store import RegionDataError
from ..errors import M3PDataError
from ..models.iglue_heads import add_iglue_head
from ..utils import split_list
from .base import M3PDataConfig, M3PTaskBase, PretrainedConfig, split_and_langs

logger = logging.getLogger(__name__)


@dataclass
class IGLUEConfig(M3PDataConfig, PretrainedConfig):
    train_langs: str = field(default="en", metadata={
        "help": "languages of the training splits (IGLUE: English; few-shot: the target language)"})
    eval_langs: str = field(default="", metadata={
        "help": "languages of plain valid/test splits (default: every language that has the split)"})


class IGLUETaskBase(M3PTaskBase):
    """An IGLUE job: texts with one or two images each, a head on the pooled output, accuracy."""

    model_kind = UNDERSTANDING
    name = None  # the job's name: the folder under DATA, the head's name, the results key
    head_kind = None  # models/iglue_heads.py
    target = CLASS
    images_per_example = 1
    labels = ()  # class names by index (CLASS targets)

    def __init__(self, cfg, dictionary):
        super().__init__(cfg, dictionary)
        if self.region_feat_dim is None:  # no regions/train.json: the sizes come from any of the data's stores
            base = cfg.regions_dir or os.path.join(self.data_path(), "regions")
            found = sorted(f for f in os.listdir(base) if f.endswith(".json")) if os.path.isdir(base) else []
            if found:
                store = self.store_at(os.path.join(base, found[0]))
                self.region_feat_dim, self.num_region_classes = store.feat_dim, store.num_classes

    def criterions(self):
        return ("m3p_iglue",)

    @property
    def head_name(self):
        return self.name

    def num_classes(self):
        return len(self.labels)

    def build_model(self, cfg, from_checkpoint=False):
        return super().build_model(cfg, from_checkpoint, prepare=lambda model: add_iglue_head(
            model, self.head_name, self.head_kind, self.num_classes()))

    def folder(self, lang=None):
        base = os.path.join(self.data_path(), self.name)
        return base if lang is None else os.path.join(base, lang)

    def langs_with(self, split):
        """The languages that have ``split`` (sorted), else one line naming the folder."""
        base = self.folder()
        langs = sorted(d for d in os.listdir(base) if os.path.exists(os.path.join(base, d, f"{split}.jsonl"))) \
            if os.path.isdir(base) else []
        if not langs:
            raise M3PDataError(f"{base}: no language has a {split!r} split (m3p-import-iglue {self.name} writes them)")
        return langs

    def default_langs(self, split):
        if split.startswith("train"):
            return split_list(self.cfg.train_langs)
        return split_list(self.cfg.eval_langs) or self.langs_with(split)

    def examples(self, lang, split):
        """The IGLUEDataset of one language's split, every line checked (text, image ids, target)."""
        prefix = os.path.join(self.folder(lang), split)
        side_path = prefix + ".jsonl"
        if not os.path.exists(side_path):
            have = ", ".join(sorted(f[:-6] for f in os.listdir(self.folder(lang)) if f.endswith(".jsonl"))) \
                if os.path.isdir(self.folder(lang)) else "none"
            raise M3PDataError(f"{side_path}: no {self.name} {split} split for language {lang!r} (have: {have})")
        texts = self.load_tokens(prefix, f"{lang} {split} {self.name} texts")
        self.check_text(prefix, texts, "text")
        side = SideFile(side_path, self.images_per_example, self.target, self.num_answers())
        if len(side) != len(texts):
            raise M3PDataError(f"{side_path}: {len(side)} lines for {len(texts)} texts in {prefix}.bin")
        if self.target == CLASS and len(side) and not (0 <= side.labels.min() and side.labels.max() < len(self.labels)):
            bad = int(np.nonzero((side.labels < 0) | (side.labels >= len(self.labels)))[0][0])
            raise M3PDataError(f"{side_path}: line {bad + 1}: label {side.labels[bad]} is not one of 0..{len(self.labels) - 1}")
        try:
            store = self.region_store(split, lang)
            rows = store.indices_of(side.image_ids.reshape(-1), source=side_path).reshape(side.image_ids.shape)
        except RegionDataError as e:
            raise M3PDataError(str(e))
        # <s> text </s>, as XLM-R reads a sentence
        return IGLUEDataset(PrependTokenDataset(texts, self.dictionary.bos()), rows, self.region_dataset(split, lang),
                            side, self.dictionary.pad(), self.target, self.num_answers())

    def num_answers(self):
        return None

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        base, langs = split_and_langs(split, [])
        langs = langs or self.default_langs(base)
        parts = [self.examples(lang, base) for lang in langs]
        # languages may have stores of their own: each part reads its regions, and a batch's items carry them
        self.datasets[split] = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        logger.info(f"{split}: {sum(len(p) for p in parts)} {self.name} examples ({','.join(langs)})")


@register_task("m3p_xvnli", dataclass=IGLUEConfig)
class M3PXVNLITask(IGLUETaskBase):
    """SNLI-VE -> XVNLI: does the image entail, contradict or leave open the hypothesis?"""

    name, head_kind = "xvnli", "classes"
    labels = ("contradiction", "neutral", "entailment")  # volta's LABEL_MAP order


@register_task("m3p_marvl", dataclass=IGLUEConfig)
class M3PMaRVLTask(IGLUETaskBase):
    """NLVR2 -> MaRVL: is the statement true of the pair of images (left, right)?"""

    name, head_kind = "marvl", "pair"
    labels = ("false", "true")
    images_per_example = 2


ANSWERS_FILE = "answers.txt"


@register_task("m3p_xgqa", dataclass=IGLUEConfig)
class M3PXGQATask(IGLUETaskBase):
    """GQA -> xGQA: the answer to a question about the image, out of the answer vocabulary
    (``DATA/xgqa/answers.txt``, IGLUE's ``trainval_ans2label``: 1,842 answers)."""

    name, head_kind = "xgqa", "answers"
    target = SOFT

    def __init__(self, cfg, dictionary):
        super().__init__(cfg, dictionary)
        path = os.path.join(self.folder(), ANSWERS_FILE)
        if not os.path.exists(path):
            raise M3PDataError(f"{path}: the xGQA answer vocabulary is missing (m3p-import-iglue xgqa --answers writes it)")
        with open(path, encoding="utf-8") as f:
            self.labels = tuple(line.rstrip("\n") for line in f)
        if not self.labels:
            raise M3PDataError(f"{path}: no answers")

    def num_answers(self):
        return len(self.labels)
