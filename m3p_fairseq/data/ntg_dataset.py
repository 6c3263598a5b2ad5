"""News title generation (XGLUE NTG) items, as ``m3p-import-dataset ntg`` writes them: the one reader of the
m3p_ntg task and of the ``ntg`` objective (English fine-tuning with xDAE kept on).

    DATA/ntg/{lang}/src/{split}.{bin,idx}   news bodies
    DATA/ntg/{lang}/tgt/{split}.{bin,idx}   their titles

The body is cut to --tokens-per-sample and the title to --max-title-tokens; source and target carry the
same language id (the paper feeds the target language to encoder and decoder). With --swap-copied-pairs, training
items have pairs of adjacent words that the title copies from the body swapped, in both (``swap_copied_pairs``).
"""
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from fairseq.data import AppendTokenDataset, ConcatDataset, PrependTokenDataset, StripTokenDataset, TruncateDataset
from fairseq.dataclass import FairseqDataclass

from ..errors import M3PDataError, M3PInputError
from .code_switch import WordDraws, split_words
from .text_generation_dataset import TextGenerationDataset

# the draws' own seed term: not code-switching's (code_switch.RANDOM_STREAM), which seeds the same (seed, epoch, index)
RANDOM_STREAM = 11


@dataclass
class NTGDataConfig(FairseqDataclass):
    max_title_tokens: int = field(default=64, metadata={"help": "NTG titles are cut to this many tokens"})
    swap_copied_pairs: float = field(default=0.0, metadata={
        "help": "NTG training: swap each pair of adjacent words that the title copies from the body with this "
                "probability, in the title and the body alike, so the title follows the body's word order, "
                "whatever it is (a language that orders a phrase otherwise than English then gets titles in its own "
                "order; before --code-switch; default 0: off)"})


def ntg_language(task, lang, split):
    """(bodies ``<s> ... </s>``, titles ``... </s>``, language ids) of one language."""
    folder = os.path.join(task.data_path(), "ntg", lang)
    if not os.path.isdir(folder):
        raise M3PDataError(f"{folder}: no NTG data for language {lang!r}")
    body = task.load_tokens(os.path.join(folder, "src", split), f"{lang} {split} news bodies")
    title = task.load_tokens(os.path.join(folder, "tgt", split), f"{lang} {split} titles")
    if len(body) != len(title):
        raise M3PDataError(f"{os.path.join(folder, 'tgt', split)}.bin: {len(title)} titles for {len(body)} "
                           f"news bodies in {os.path.join(folder, 'src', split)}.bin")
    eos, bos = task.dictionary.eos(), task.dictionary.bos()
    # cut the text, not its </s>: strip it, truncate, put it back (then <s> in front of the body)
    body = PrependTokenDataset(AppendTokenDataset(TruncateDataset(
        StripTokenDataset(body, eos), task.cfg.tokens_per_sample - 2), eos), bos)
    title = AppendTokenDataset(TruncateDataset(StripTokenDataset(title, eos), task.cfg.max_title_tokens - 1), eos)
    return body, title, np.full(len(body), task.lang_id(lang))


def _swapped_order(keys, pairs, ratio):
    """Word order with disjoint pairs of adjacent words swapped, left to right: a pair of ``pairs`` (an
    iterable of (key, key)) with probability ``ratio`` (None: every one). Returns (order, pairs swapped)."""
    order, swapped, k = list(range(len(keys))), set(), 0
    while k < len(keys) - 1:
        pair = (keys[k], keys[k + 1])
        if pair in pairs and (ratio is None or np.random.rand() < ratio):
            order[k], order[k + 1] = k + 1, k
            swapped.add(pair)
            k += 2
        else:
            k += 1
    return order, swapped


def swap_copied_pairs(source, target, symbols, starts, special, ratio):
    """(source, target) with pairs of adjacent words that the target has as the source has them swapped, each
    pair with probability ``ratio``, in the target and wherever the source has it. A title's phrases so come
    in the body's order in both orders, and a model fine-tuned on them copies a phrase in the order the body
    gives it (with every English title "c1 o1 and c2 o2" it learnt the colour first, and wrote French and
    Spanish titles so). Call under a seeded numpy RNG."""
    s_words, s_keys = split_words(source, symbols, starts, special)
    t_words, t_keys = split_words(target, symbols, starts, special)
    copied = {p for p in zip(s_keys, s_keys[1:]) if None not in p}
    t_order, swapped = _swapped_order(t_keys, copied, ratio)
    if not swapped:
        return source, target
    s_order, _ = _swapped_order(s_keys, swapped, None)
    reorder = lambda tokens, words, order: torch.cat([tokens[slice(*words[k])] for k in order])  # noqa: E731
    return reorder(source, s_words, s_order), reorder(target, t_words, t_order)


class CopiedPairSwapDataset(WordDraws):
    """NTG items with ``swap_copied_pairs`` applied, drawn anew every epoch (sizes unchanged: the same tokens)."""

    def __init__(self, dataset, vocab, ratio, seed=1):
        super().__init__(dataset, vocab, seed, RANDOM_STREAM)
        if not 0.0 <= ratio <= 1.0:
            raise M3PInputError(f"--swap-copied-pairs {ratio}: a probability, in [0, 1]")
        self.ratio = ratio

    def __getitem__(self, index):
        item = self.dataset[index]
        with self.draws(index):
            source, target = swap_copied_pairs(item["source"], item["target"], self.symbols, self.starts,
                                               self.special, self.ratio)
        return dict(item, source=source, target=target)


def ntg_dataset(task, split, langs, seed=1):
    """The (body -> title) items of ``langs``, concatenated; English training items code-switched with
    --code-switch (body and title together: the multimodal code-switching of the paper's later version, here
    on text)."""
    parts = [ntg_language(task, lang, split) for lang in langs]
    concat = (lambda ds: ConcatDataset(ds) if len(ds) > 1 else ds[0])
    ids = np.concatenate([p[2] for p in parts])
    items = TextGenerationDataset(concat([p[0] for p in parts]), concat([p[1] for p in parts]), ids, ids,
                                  task.dictionary)
    if split == "train" and task.cfg.swap_copied_pairs:
        items = CopiedPairSwapDataset(items, task.dictionary, task.cfg.swap_copied_pairs, seed)
    return task.code_switched_pairs(items, split, seed)
