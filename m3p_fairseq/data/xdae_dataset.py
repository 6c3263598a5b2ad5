"""xDAE: corrupt text in any language, decode the original (the paper's three steps, in its order).

1. shuffle: add U(0, k) noise (k = 3) to the word positions and reorder by the noised index;
2. drop: drop each word with p = 0.3;
3. infill: replace spans of words, Poisson(3) lengths, by one <mask> each; a 0-length span
   inserts a <mask>.

Words are sentencepiece words: a word starts at a piece beginning with "▁" (and at every special
symbol), and runs over the pieces that follow. Languages written without spaces (ja, zh) are
therefore one "word" per sentence for steps 1 and 2, as XLM-R's pieces make them.

What comes from fairseq and what does not:
* steps 1 and 2 are fairseq's ``WordShuffle`` and ``WordDropout`` (``fairseq.data.noising``).
  They find words from a per-piece *end* marker ("@@" or an end-of-word suffix); sentencepiece
  marks word *starts*, so the subclasses below only replace their word-index function.
* fairseq's ``NoisingDataset`` is not used: it seeds numpy with ``seed + index`` (the same noise
  every epoch) and has no span infilling. Here every item is noised under
  ``data_utils.numpy_seed(seed, epoch, index)``, as MaskTokensDataset does.
* ``DenoisingDataset``'s text infilling (BART) is not used: it trims the last span to a token
  budget, lets spans overlap and merge, and draws from torch's unseeded RNG, so its span lengths
  are neither Poisson(3) nor reproducible per index. Step 3 uses ``spans.sample_spans`` (numpy,
  under the same seed), whose spans keep their Poisson lengths and never touch.
"""
import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils
from fairseq.data.noising import WordDropout, WordShuffle

from .seq2seq_collate import collate_seq2seq
from .spans import sample_spans

SPM_SPACE = "\u2581"


def special_symbols(dictionary):
    """Boolean array over the vocabulary: fairseq's special symbols and <mask>."""
    special = np.zeros(len(dictionary), dtype=bool)
    special[: dictionary.nspecial] = True
    if "<mask>" in dictionary.indices:
        special[dictionary.index("<mask>")] = True
    return special


def sentencepiece_word_starts(dictionary):
    """Boolean array over the vocabulary: does this piece start a word?"""
    starts = np.array([sym.startswith(SPM_SPACE) for sym in dictionary.symbols], dtype=bool)
    return starts | special_symbols(dictionary)


def word_start_flags(tokens, word_starts, special):
    """Per token of a 1-d sequence: does a word start here? The first token always does, and so
    does the token after a special symbol (a piece glued to <s> is still a new word)."""
    ids = tokens.numpy() if torch.is_tensor(tokens) else np.asarray(tokens)
    flags = word_starts[ids].copy()
    if len(flags):
        flags[0] = True
        flags[1:] |= special[ids[:-1]]
    return flags


class _SentencepieceWords:
    """Swaps fairseq's word-index function (which WordNoising binds per instance) for one that
    reads sentencepiece's word-start marker. x is T x B, as fairseq's noisers take it."""

    def _use_sentencepiece_words(self, word_starts, special):
        self.word_starts, self.special = word_starts, special
        self.get_word_idx = self._sentencepiece_word_idx

    def _sentencepiece_word_idx(self, x):
        cols = [word_start_flags(x[:, i], self.word_starts, self.special) for i in range(x.size(1))]
        return np.stack(cols, axis=1).cumsum(axis=0) - 1


class SentencepieceWordShuffle(_SentencepieceWords, WordShuffle):
    def __init__(self, dictionary, word_starts, special):
        super().__init__(dictionary, bpe_cont_marker=None)
        self._use_sentencepiece_words(word_starts, special)


class SentencepieceWordDropout(_SentencepieceWords, WordDropout):
    def __init__(self, dictionary, word_starts, special):
        super().__init__(dictionary, bpe_cont_marker=None)
        self._use_sentencepiece_words(word_starts, special)


def replace_spans(tokens, flags, starts, lengths, mask_idx):
    """Replace word spans (word index ``starts``, word counts ``lengths``) by one mask each."""
    bounds = np.append(np.flatnonzero(flags), len(tokens))  # token offset of each word, then the end
    mask = tokens.new_tensor([mask_idx])
    pieces, w = [], 0
    for s, n in zip(starts, lengths):
        pieces += [tokens[bounds[w]:bounds[s]], mask]
        w = s + n
    pieces.append(tokens[bounds[w]:])
    return torch.cat(pieces)


class XDAEDataset(FairseqDataset):
    """Item i: ``source`` = noised ``<s> ... </s>`` for the encoder, ``target`` = the original
    ``... </s>`` for the decoder, and the language id of the text for both.

    Args:
        dataset: token dataset of ``<s> ... </s>`` items (one or more sentences each)
        langs: language id of every item
        seed: items are noised under numpy_seed(seed, epoch, index)
        shuffle_distance: k of the U(0, k) position noise (0: no shuffle; fairseq needs k > 1)
        drop_prob: probability of dropping each word
        mask_ratio: share of words inside masked spans on average (0: no infilling)
        poisson_lambda: mean span length
    """

    def __init__(self, dataset, langs, dictionary, seed, shuffle_distance=3.0, drop_prob=0.3, mask_ratio=0.3,
                 poisson_lambda=3.0, mask_idx=None):
        if not (shuffle_distance == 0 or shuffle_distance > 1):
            raise ValueError(f"shuffle_distance must be 0 or > 1, got {shuffle_distance}")
        if not (0.0 <= drop_prob < 1.0 and 0.0 <= mask_ratio < 1.0 and poisson_lambda > 0):
            raise ValueError("need 0 <= drop_prob < 1, 0 <= mask_ratio < 1 and poisson_lambda > 0")
        langs = np.asarray(langs, dtype=np.int64)
        if len(langs) != len(dataset):
            raise ValueError(f"{len(langs)} language ids for {len(dataset)} items")
        self.dataset, self.langs, self.dictionary = dataset, langs, dictionary
        self.seed, self.epoch = seed, 1
        self.shuffle_distance, self.drop_prob = shuffle_distance, drop_prob
        self.mask_ratio, self.poisson_lambda = mask_ratio, poisson_lambda
        self.mask_idx = dictionary.index("<mask>") if mask_idx is None else mask_idx
        if self.mask_idx == dictionary.unk():
            raise ValueError("the dictionary has no <mask>")
        self.bos, self.eos, self.pad = dictionary.bos(), dictionary.eos(), dictionary.pad()
        self.word_starts = sentencepiece_word_starts(dictionary)
        self.special = special_symbols(dictionary)
        self.shuffler = SentencepieceWordShuffle(dictionary, self.word_starts, self.special)
        self.dropper = SentencepieceWordDropout(dictionary, self.word_starts, self.special)

    def __len__(self):
        return len(self.dataset)

    @property
    def sizes(self):
        return self.dataset.sizes

    def size(self, index):
        return int(self.dataset.sizes[index])

    def num_tokens(self, index):
        return int(self.dataset.sizes[index])

    def num_tokens_vec(self, indices):
        return np.asarray(self.dataset.sizes)[indices]

    def ordered_indices(self):
        return np.lexsort((np.random.permutation(len(self)), np.asarray(self.sizes)))

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return getattr(self.dataset, "can_reuse_epoch_itr_across_epochs", False)

    def set_epoch(self, epoch):
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index):
        tokens = self.dataset[index]
        assert tokens[0] == self.bos and tokens[-1] == self.eos, "xDAE items are <s> ... </s>"
        with data_utils.numpy_seed(self.seed, self.epoch, index):
            source = self.noise(tokens)
        assert source[0] == self.bos and source[-1] == self.eos
        lang = int(self.langs[index])
        return {"id": index, "source": source, "target": tokens[1:], "src_lang": lang, "tgt_lang": lang}

    def noise(self, tokens):
        """<s> words </s> -> <s> shuffled, dropped, infilled words </s>. Call under a seeded numpy RNG."""
        x = tokens
        if self.shuffle_distance > 0:
            # <s> is word 0, which WordShuffle never moves; the final </s> stays last
            x = self.shuffler.noising(x.unsqueeze(1), torch.LongTensor([len(x)]), self.shuffle_distance)[0][:, 0]
        body = x[1:]  # words </s>
        if self.drop_prob > 0 and len(body) > 1:
            body = self.dropper.noising(body.unsqueeze(1), torch.LongTensor([len(body)]), self.drop_prob)[0][:, 0]
            if len(body) == 2 and body[0] == self.eos:  # WordDropout refills an emptied text with a random token
                body = body[1:]
        words = body[:-1]
        if self.mask_ratio > 0:
            flags = word_start_flags(words, self.word_starts, self.special)
            starts, lengths = sample_spans(int(flags.sum()), self.mask_ratio, self.poisson_lambda)
            words = replace_spans(words, flags, starts, lengths, self.mask_idx)
        return torch.cat([x.new_tensor([self.bos]), words, x.new_tensor([self.eos])])

    def collater(self, samples):
        return collate_seq2seq(samples, self.pad, self.eos)
