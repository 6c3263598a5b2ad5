"""XNLI on the understanding model: sentence pairs, three classes, accuracy per language.

    fairseq-train DATA --user-dir m3p_fairseq --task m3p_xnli --criterion m3p_classification \\
        --arch m3p_base --pretrained-checkpoint m3p.pt --train-langs en ...
    fairseq-validate DATA --user-dir m3p_fairseq --task m3p_xnli --path checkpoint_best.pt \\
        --valid-subset test.en,test.de,test.fr --criterion m3p_classification

Reads fairseq's sentence-prediction layout as ``m3p-import-dataset xnli`` writes it:
``xnli/{lang}/{input0,input1}/{split}`` (premise, hypothesis) and ``xnli/{lang}/label/{split}``
binarized with the label dictionary beside it. The pair is fed as XLM-R reads one,
``<s> premise </s></s> hypothesis </s>``, text only; a classification head on [CLS] predicts
entailment / neutral / contradiction. The paper fine-tunes on English and tests every language.
"""
import logging
import os
from dataclasses import dataclass, field

import numpy as np
from fairseq.data import (ConcatDataset, ConcatSentencesDataset, Dictionary, PrependTokenDataset, RawLabelDataset,
                          SortDataset, TruncateDataset, data_utils)
from fairseq.tasks import register_task

from ..checkpoints import UNDERSTANDING
from ..data.text_items import text_items
from ..errors import M3PDataError
from ..utils import split_list
from .base import M3PDataConfig, M3PTaskBase, PretrainedConfig, split_and_langs

logger = logging.getLogger(__name__)

XNLI_LABELS = ("entailment", "neutral", "contradiction")
XNLI_HEAD = "xnli"


@dataclass
class M3PXNLIConfig(M3PDataConfig, PretrainedConfig):
    train_langs: str = field(default="en", metadata={"help": "languages to fine-tune on (paper: en)"})
    eval_langs: str = field(default="", metadata={
        "help": "languages of the valid/test splits (default: every language under DATA/xnli)"})


def read_labels(task, lang, split):
    """Class index of every line of ``xnli/{lang}/label/{split}``; a label outside the three classes
    stops with its file and line."""
    folder = os.path.join(task.data_path(), "xnli", lang, "label")
    dict_path = os.path.join(folder, "dict.txt")
    if not os.path.exists(dict_path):
        raise M3PDataError(f"{dict_path}: label dictionary not found (m3p-import-dataset xnli writes it)")
    label_dict = Dictionary.load(dict_path)
    labels = data_utils.load_indexed_dataset(os.path.join(folder, split), label_dict, combine=False)
    if labels is None:
        raise M3PDataError(f"{os.path.join(folder, split)}.bin: {lang} {split} labels not found")
    out = np.empty(len(labels), dtype=np.int64)
    for i in range(len(labels)):
        symbol = label_dict[int(labels[i][0])]
        if symbol not in XNLI_LABELS:
            raise M3PDataError(f"{os.path.join(folder, split)}.bin: line {i + 1}: label {symbol!r} is not one of "
                               f"{', '.join(XNLI_LABELS)}")
        out[i] = XNLI_LABELS.index(symbol)
    return out


@register_task("m3p_xnli", dataclass=M3PXNLIConfig)
class M3PXNLITask(M3PTaskBase):
    model_kind = UNDERSTANDING

    def criterions(self):
        return ("m3p_classification",)

    def build_model(self, cfg, from_checkpoint=False):
        return super().build_model(cfg, from_checkpoint, prepare=lambda model: model.register_classification_head(
            XNLI_HEAD, num_classes=len(XNLI_LABELS)))

    def eval_langs(self):
        return self.folder_langs(self.cfg.eval_langs, "xnli", "XNLI data")

    def pairs(self, lang, split):
        """(``<s> premise </s></s> hypothesis </s>``, class indices) of one language."""
        folder = os.path.join(self.data_path(), "xnli", lang)
        if not os.path.isdir(folder):
            raise M3PDataError(f"{folder}: no XNLI data for language {lang!r}")
        premise = self.load_tokens(os.path.join(folder, "input0", split), f"{lang} {split} premises")
        hypo = self.load_tokens(os.path.join(folder, "input1", split), f"{lang} {split} hypotheses")
        labels = read_labels(self, lang, split)
        if not (len(premise) == len(hypo) == len(labels)):
            raise M3PDataError(f"{folder}: {len(premise)} premises, {len(hypo)} hypotheses and {len(labels)} labels "
                               f"in {split}")
        pair = ConcatSentencesDataset(PrependTokenDataset(premise, self.dictionary.bos()),
                                      PrependTokenDataset(hypo, self.dictionary.eos()))
        return TruncateDataset(pair, self.cfg.tokens_per_sample), labels

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        base = split.split(".", 1)[0]
        default = split_list(self.cfg.train_langs) if base == "train" else self.eval_langs()
        base, langs = split_and_langs(split, default)
        parts = [self.pairs(lang, base) for lang in langs]
        src = ConcatDataset([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([p[1] for p in parts])
        dataset = text_items(src, RawLabelDataset(labels.tolist()), self.dictionary.pad())
        with data_utils.numpy_seed(self.cfg.seed, epoch):
            shuffle = np.random.permutation(len(src))
        # one fixed shuffle, as fairseq's sentence_prediction (batches mix labels and lengths)
        self.datasets[split] = SortDataset(dataset, sort_order=[shuffle])
        logger.info(f"{split}: {len(dataset)} pairs ({','.join(langs)})")
