"""Multimodal code-switching (the later version of M3P): words of English captions replaced by
their translations from bilingual dictionaries, so image regions meet words of many languages.

A sentence is switched with probability ``sentence_ratio``; in a switched sentence each word that
a dictionary translates is replaced with probability ``word_ratio`` (0.8 and 0.8 by default, off
unless asked for, as in the reference code), by one of its translations picked uniformly over the
languages (and entries) that have one. Written by hand: no fairseq dataset edits words.

Words are sentencepiece words (a piece starting with "▁" starts one, as in xDAE); a word's text
is its pieces joined. Translations are encoded once with the data's sentencepiece model, as a
word of their own ("▁" first). Dictionaries are MUSE-style lists, one pair a line: ``en-xx.tsv``
(word<TAB>translation, written by ``m3p-import-dataset muse`` into DATA/dictionaries) or
``en-xx.txt`` (word translation, the embedded world's DATA/dict).
"""
import glob
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset, data_utils
from fairseq.dataclass import FairseqDataclass

from ..errors import M3PInputError
from .xdae_dataset import sentencepiece_word_starts, special_symbols

DICT_FOLDERS = ("dictionaries", "dict")  # m3p-import-dataset muse; the embedded world
# an extra seed term: the datasets around this one seed numpy with the same (seed, epoch, index)
RANDOM_STREAM = 7


@dataclass
class CodeSwitchConfig(FairseqDataclass):
    """Multimodal code-switching of English captions (an option of the understanding tasks)."""

    code_switch: bool = field(default=False, metadata={
        "help": "replace words of English training captions (NTG: news bodies, and their titles alike) by dictionary translations (multimodal "
                "code-switching; off by default, as in the reference code)"})
    code_switch_langs: str = field(default="", metadata={
        "help": "comma-separated languages to switch into (default: every en-xx dictionary found)"})
    code_switch_dicts: Optional[str] = field(default=None, metadata={
        "help": "folder of en-xx.tsv / en-xx.txt bilingual dictionaries (default: DATA/dictionaries, else DATA/dict)"})
    code_switch_sentence_ratio: float = field(default=0.8, metadata={"help": "share of captions switched"})
    code_switch_one_language: bool = field(default=False, metadata={
        "help": "NTG: switch each English body (with its title, the title's own words too) into one language drawn "
                "per item, trained under that language's id (default: words into any language, the English id)"})
    code_switch_word_ratio: float = field(default=0.8, metadata={
        "help": "share of translatable words replaced in a switched caption"})


def find_dictionaries(data, folder=None, langs=None):
    """{lang: path} of the en-xx dictionaries in ``folder`` (default: DATA/dictionaries, else DATA/dict)."""
    folders = [folder] if folder else [os.path.join(data, f) for f in DICT_FOLDERS]
    for f in folders:
        found = {}
        for path in sorted(glob.glob(os.path.join(f, "en-*.tsv")) + glob.glob(os.path.join(f, "en-*.txt"))):
            found.setdefault(os.path.basename(path).split(".")[0][3:], path)
        if found:
            if langs:
                missing = [l for l in langs if l not in found]
                if missing:
                    raise M3PInputError(f"{f}: no en-{missing[0]} dictionary (have: {', '.join(sorted(found))})")
                found = {l: found[l] for l in langs}
            return found
    raise M3PInputError(f"{' or '.join(folders)}: no en-xx bilingual dictionaries for --code-switch "
                        f"(m3p-import-dataset muse writes DATA/dictionaries)")


def read_dictionary(path):
    """[(english word, translation)], one pair a line (tab- or space-separated)."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t") if "\t" in line else line.split()
            if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                raise M3PInputError(f"{path}: line {n}: expected 'word translation', found {len(parts)} fields")
            pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs


def build_tables(dictionaries, vocab, spm_model):
    """{lang: {english word -> [token ids of one translation]}}, every dictionary encoded once."""
    import sentencepiece as spm

    if not os.path.isfile(spm_model):
        raise M3PInputError(f"{spm_model}: sentencepiece model not found (code-switching encodes the translations)")
    sp = spm.SentencePieceProcessor(model_file=spm_model)
    tables = {}
    for lang, path in sorted(dictionaries.items()):
        table = tables.setdefault(lang, {})
        for word, translation in read_dictionary(path):
            ids = [vocab.index(p) for p in sp.encode(translation, out_type=str)]
            if ids:
                table.setdefault(word, []).append(torch.LongTensor(ids))
    return tables


def merge_tables(tables):
    """english word -> [translations in every language], the languages in name order."""
    merged = {}
    for lang in sorted(tables):
        for word, options in tables[lang].items():
            merged.setdefault(word, []).extend(options)
    return merged


def build_table(dictionaries, vocab, spm_model):
    """english word -> [token ids of one translation] over every dictionary, encoded once."""
    return merge_tables(build_tables(dictionaries, vocab, spm_model))


def split_words(tokens, symbols, starts, special):
    """The sentencepiece words of a token sequence: [(start, end)] and each word's text (None for a special
    symbol), the key the dictionaries are looked up by."""
    ids = tokens.tolist()
    flags = starts[tokens.numpy()].copy()
    flags[0] = True
    bounds = [i for i, f in enumerate(flags) if f] + [len(ids)]
    words = [(bounds[k], bounds[k + 1]) for k in range(len(bounds) - 1)]
    keys = [None if special[ids[a]] else "".join(symbols[i] for i in ids[a:b]).replace("\u2581", "") for a, b in words]
    return words, keys


def _replace(tokens, words, new_of, max_tokens):
    """``tokens`` with word k replaced by ``new_of[k]`` where given (a replacement that would make the sequence
    longer than ``max_tokens`` is not used); returns (tokens, replaced words)."""
    out, switched, length = [], 0, len(tokens)
    for k, (a, b) in enumerate(words):
        new = new_of.get(k)
        if new is not None and (max_tokens is None or length - (b - a) + len(new) <= max_tokens):
            out.append(new)
            length += len(new) - (b - a)
            switched += 1
        else:
            out.append(tokens[a:b])
    return torch.cat(out), switched


def code_switch_tokens(tokens, table, symbols, starts, special, sentence_ratio, word_ratio, max_tokens=None):
    """Switch one token sequence. Call under a seeded numpy RNG.

    Returns (tokens, candidates, switched, drawn): the new sequence, how many words a dictionary
    translates, how many of them were replaced, and whether the sentence was drawn for switching.
    """
    words, keys = split_words(tokens, symbols, starts, special)
    candidates = [k for k, key in enumerate(keys) if key in table]
    if not candidates or np.random.rand() >= sentence_ratio:
        return tokens, len(candidates), 0, False
    replace = {k for k in candidates if np.random.rand() < word_ratio}
    new_of = {k: table[keys[k]][np.random.randint(len(table[keys[k]]))] for k in sorted(replace)}
    out, switched = _replace(tokens, words, new_of, max_tokens)
    return out, len(candidates), switched, True


def code_switch_pair(source, target, table, symbols, starts, special, sentence_ratio, word_ratio, max_tokens=None,
                     target_own_words=False):
    """Switch a source and its target together (an NTG news body and its title): each word of the source that a
    dictionary translates is replaced (with probability ``word_ratio``) by one translation, the same one wherever
    the word occurs, in the source and in the target. A title that copies the body's words copies them in
    whatever language the body has them, so the skill fine-tuned on English carries to bodies written in other
    languages. A target word the source lacks (the title's own "and") stays as it is, or with
    ``target_own_words`` (``table`` then one language's) is put in that language too. Call under a seeded
    numpy RNG. Returns (source, target, drawn)."""
    words, keys = split_words(source, symbols, starts, special)
    types = sorted({key for key in keys if key in table})
    if not types or np.random.rand() >= sentence_ratio:
        return source, target, False
    choice = {key: table[key][np.random.randint(len(table[key]))] for key in types if np.random.rand() < word_ratio}
    source, _ = _replace(source, words, {k: choice.get(key) for k, key in enumerate(keys)}, max_tokens)
    if target is None:
        return source, None, True
    t_words, t_keys = split_words(target, symbols, starts, special)
    own = {key: table[key][np.random.randint(len(table[key]))] for key in sorted(set(t_keys) - set(keys))
           if key in table} if target_own_words else {}
    target, _ = _replace(target, t_words, {k: choice.get(key, own.get(key)) for k, key in enumerate(t_keys)}, None)
    return source, target, True


class WordDraws(BaseWrapperDataset):
    """A wrapper that edits its items' sentencepiece words with draws seeded by (seed, epoch, index, ``stream``),
    new every epoch: the vocabulary's word boundaries, and the seeding (``draws(index)``)."""

    def __init__(self, dataset, vocab, seed=1, stream=RANDOM_STREAM):
        super().__init__(dataset)
        self.symbols, self.starts, self.special = vocab.symbols, sentencepiece_word_starts(vocab), special_symbols(vocab)
        self.seed, self.epoch, self.stream = seed, 1, stream

    def draws(self, index):
        """The seeded numpy RNG of item ``index`` this epoch (a context manager)."""
        return data_utils.numpy_seed(self.seed, self.epoch, index, self.stream)

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        self.epoch = epoch

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return False  # new draws every epoch


class _Switching(WordDraws):
    """What the code-switching datasets share: the table and the ratios (and WordDraws's word boundaries and
    draws)."""

    def __init__(self, dataset, vocab, table, sentence_ratio=0.8, word_ratio=0.8, seed=1, max_tokens=None):
        super().__init__(dataset, vocab, seed)
        if not (0.0 <= sentence_ratio <= 1.0 and 0.0 <= word_ratio <= 1.0):
            raise ValueError("code-switching ratios must be in [0, 1]")
        if not table:
            raise ValueError("code-switching needs a non-empty dictionary table")
        self.table, self.sentence_ratio, self.word_ratio, self.max_tokens = table, sentence_ratio, word_ratio, max_tokens


class CodeSwitchPairDataset(_Switching):
    """Source-target items (TextGenerationDataset's: NTG) whose source language is ``lang_id`` switched together
    (``code_switch_pair``); items of other languages pass unchanged.

    ``into``: {language id: that language's table}: each switched item goes into one language, drawn per item,
    its own target words included, and is trained under that language's id (the paper feeds the target
    language's id to encoder and decoder); without it, words go into any language and the item keeps its id."""

    def __init__(self, dataset, vocab, table, lang_id, into=None, **kwargs):
        super().__init__(dataset, vocab, table, **kwargs)
        self.lang_id, self.into = lang_id, sorted((into or {}).items())

    def __getitem__(self, index):
        item = self.dataset[index]
        if item["src_lang"] != self.lang_id:
            return item
        with self.draws(index):
            if not self.into:
                source, target, _ = code_switch_pair(item["source"], item["target"], self.table, self.symbols,
                                                     self.starts, self.special, self.sentence_ratio, self.word_ratio,
                                                     self.max_tokens)
                return dict(item, source=source, target=target)
            lang, table = self.into[np.random.randint(len(self.into))]
            source, target, drawn = code_switch_pair(item["source"], item["target"], table, self.symbols, self.starts,
                                                     self.special, self.sentence_ratio, self.word_ratio,
                                                     self.max_tokens, target_own_words=True)
        if not drawn:
            return item
        return dict(item, source=source, target=target, src_lang=lang, tgt_lang=lang)


class CodeSwitchDataset(_Switching):
    """Captions with words switched into other languages, drawn anew every epoch.

    ``sizes`` stay those of the original captions (batching only needs them roughly); a switched
    caption never grows beyond ``max_tokens``: a translation that would not fit is not used.
    ``same_word_same_way``: a word is switched the same way wherever it occurs in the item (a sentence pair
    such as XNLI's, whose label depends on which words the two sentences share), else each occurrence alone.
    """

    def __init__(self, dataset, vocab, table, sentence_ratio=0.8, word_ratio=0.8, seed=1, max_tokens=None,
                 same_word_same_way=False):
        super().__init__(dataset, vocab, table, sentence_ratio, word_ratio, seed, max_tokens)
        self.same_word_same_way = same_word_same_way

    def switch(self, index):
        """(tokens, candidates, switched, drawn) of item ``index`` (the statistics are for tests; with
        ``same_word_same_way`` only the tokens are meaningful)."""
        with self.draws(index):
            if self.same_word_same_way:
                tokens, _, drawn = code_switch_pair(self.dataset[index], None, self.table, self.symbols, self.starts,
                                                    self.special, self.sentence_ratio, self.word_ratio, self.max_tokens)
                return tokens, None, None, drawn
            return code_switch_tokens(self.dataset[index], self.table, self.symbols, self.starts, self.special,
                                      self.sentence_ratio, self.word_ratio, self.max_tokens)

    def __getitem__(self, index):
        return self.switch(index)[0]
