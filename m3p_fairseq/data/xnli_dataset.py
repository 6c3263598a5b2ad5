"""XNLI sentence pairs, as ``m3p-import-dataset xnli`` writes them: the one reader of the m3p_xnli task
and of the ``xnli`` objective (English fine-tuning with pre-training objectives kept on).

    DATA/xnli/{lang}/input0/{split}.{bin,idx}   premises
    DATA/xnli/{lang}/input1/{split}.{bin,idx}   hypotheses
    DATA/xnli/{lang}/label/{split}.{bin,idx}    labels, binarized with label/dict.txt

A pair is fed as XLM-R reads one, ``<s> premise </s></s> hypothesis </s>``, text only.
"""
import os

import numpy as np
from fairseq.data import (ConcatDataset, ConcatSentencesDataset, Dictionary, PrependTokenDataset, RawLabelDataset,
                          SortDataset, TruncateDataset, data_utils)

from ..errors import M3PDataError
from .text_items import text_items

XNLI_LABELS = ("entailment", "neutral", "contradiction")
XNLI_HEAD = "xnli"


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


def xnli_pairs(task, lang, split, seed=1):
    """(``<s> premise </s></s> hypothesis </s>``, class indices) of one language; English training pairs
    code-switched with --code-switch, a word switched the same way in premise and hypothesis (what the two
    share decides the label)."""
    folder = os.path.join(task.data_path(), "xnli", lang)
    if not os.path.isdir(folder):
        raise M3PDataError(f"{folder}: no XNLI data for language {lang!r}")
    premise = task.load_tokens(os.path.join(folder, "input0", split), f"{lang} {split} premises")
    hypo = task.load_tokens(os.path.join(folder, "input1", split), f"{lang} {split} hypotheses")
    labels = read_labels(task, lang, split)
    if not (len(premise) == len(hypo) == len(labels)):
        raise M3PDataError(f"{folder}: {len(premise)} premises, {len(hypo)} hypotheses and {len(labels)} labels "
                           f"in {split}")
    pair = ConcatSentencesDataset(PrependTokenDataset(premise, task.dictionary.bos()),
                                  PrependTokenDataset(hypo, task.dictionary.eos()))
    pair = TruncateDataset(pair, task.cfg.tokens_per_sample)
    return task.code_switched(pair, lang, split, seed, same_word_same_way=True), labels


def xnli_dataset(task, split, langs, seed, epoch=1):
    """The pairs of ``langs`` in one fixed shuffle, as fairseq's sentence_prediction (batches mix labels and
    lengths): ``{id, net_input: {src_tokens, src_lengths}, target, nsentences, ntokens}``."""
    parts = [xnli_pairs(task, lang, split, seed) for lang in langs]
    src = ConcatDataset([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts])
    dataset = text_items(src, RawLabelDataset(labels.tolist()), task.dictionary.pad())
    with data_utils.numpy_seed(seed, epoch):
        shuffle = np.random.permutation(len(src))
    return SortDataset(dataset, sort_order=[shuffle])
