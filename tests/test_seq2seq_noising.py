"""xDAE and DIC noise against the paper's numbers: drop rate, shuffle distance, Poisson(3) spans."""
import math
import os

import numpy as np
import pytest
import torch
from fairseq.data import Dictionary, ListDataset, data_utils

from m3p_fairseq.data.caption_generation_dataset import CaptionGenerationDataset, zero_region_spans
from m3p_fairseq.data.region_dataset import RegionDataset
from m3p_fairseq.data.region_store import RegionStore
from m3p_fairseq.data.spans import sample_spans
from m3p_fairseq.data.xdae_dataset import XDAEDataset

# chi-square critical values at alpha = 0.001 (df -> value), from the standard table
CHI2_999 = {8: 26.12, 9: 27.88}


def _poisson(k, lam=3.0):
    return math.exp(-lam) * lam ** k / math.factorial(k)


def _chi_square(counts, probs):
    """Pearson's statistic for observed counts against cell probabilities (summing to 1)."""
    counts, probs = np.asarray(counts, float), np.asarray(probs, float)
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


def _poisson_cells(lengths, first=0, last=8):
    """Counts for lengths first..last and one cell for > last; Poisson(3) probabilities conditioned on >= first."""
    lengths = np.asarray(lengths)
    counts = [int((lengths == k).sum()) for k in range(first, last + 1)] + [int((lengths > last).sum())]
    probs = [_poisson(k) for k in range(first, last + 1)]
    norm = 1.0 - sum(_poisson(k) for k in range(first))
    probs = [p / norm for p in probs] + [1.0 - sum(probs) / norm]
    return counts, probs


@pytest.fixture(scope="module")
def vocab():
    """Ten words of 1-3 sentencepiece pieces each ("▁wK" starts word K, "cK_j" continue it),
    plus 100 one-piece words, then <mask> last as in the task's dictionary."""
    d = Dictionary()
    words = []
    for k in range(10):
        pieces = [d.add_symbol(f"\u2581w{k}")] + [d.add_symbol(f"c{k}_{j}") for j in range(k % 3)]
        words.append(pieces)
    singles = [d.add_symbol(f"\u2581s{k}") for k in range(100)]
    d.add_symbol("<mask>")
    return d, words, singles


def _sentences(d, words, n):
    line = torch.tensor([d.bos()] + [p for w in words for p in w] + [d.eos()])
    return ListDataset([line.clone() for _ in range(n)], np.full(n, len(line)))


def _xdae(d, data, **kw):
    kw = {"shuffle_distance": 0.0, "drop_prob": 0.0, "mask_ratio": 0.0, **kw}
    return XDAEDataset(data, np.zeros(len(data), dtype=np.int64), d, seed=7, **kw)


def _words_of(source, d, words):
    """Split a noised source into the original word indices (pieces must stay whole and in order)."""
    start_of = {w[0]: k for k, w in enumerate(words)}
    toks, out, i = source.tolist()[1:-1], [], 0
    while i < len(toks):
        k = start_of[toks[i]]
        assert toks[i:i + len(words[k])] == words[k], "a word was split"
        out.append(k)
        i += len(words[k])
    return out


def test_drop_rate_is_30_percent_of_whole_words(vocab):
    d, words, _ = vocab
    ds = _xdae(d, _sentences(d, words, 5000), drop_prob=0.3)
    kept = sum(len(_words_of(ds[i]["source"], d, words)) for i in range(len(ds)))
    rate = 1.0 - kept / (10 * len(ds))
    assert abs(rate - 0.3) < 0.01, rate


def test_shuffle_never_moves_a_word_more_than_3_positions(vocab):
    d, words, _ = vocab
    ds = _xdae(d, _sentences(d, words, 2000), shuffle_distance=3.0)
    moved, largest = 0, 0
    for i in range(len(ds)):
        src = ds[i]["source"]
        assert src[0] == d.bos() and src[-1] == d.eos()
        order = _words_of(src, d, words)
        assert sorted(order) == list(range(10))
        shift = np.abs(np.arange(10) - np.asarray(order))
        largest, moved = max(largest, int(shift.max())), moved + int((shift > 0).sum())
    assert largest <= 3  # U(0, 3) noise on integer positions in fact bounds it by 2
    assert moved / (10 * len(ds)) > 0.3  # and it does shuffle


def _masked_spans(source, d, n_words):
    """Lengths of the spans behind each <mask> of a noised 0..n_words-1 sequence (ids of singles)."""
    mask = d.index("<mask>")
    toks = source.tolist()[1:-1]
    lengths, prev = [], -1
    first = d.index("\u2581s0")
    for j, t in enumerate(toks):
        if t == mask:
            nxt = next((u - first for u in toks[j + 1:] if u != mask), n_words)
            assert j + 1 >= len(toks) or toks[j + 1] != mask, "spans touch"
            lengths.append(nxt - prev - 1)
        else:
            w = t - first
            assert w > prev
            if j == 0 or toks[j - 1] != mask:
                assert w == prev + 1, "a word vanished without a <mask>"
            prev = w
    assert (toks and toks[-1] == mask) or prev == n_words - 1, "the last words vanished without a <mask>"
    return lengths


def test_infilled_spans_are_poisson_3_and_zero_length_spans_insert(vocab):
    d, _, singles = vocab
    line = torch.tensor([d.bos()] + singles + [d.eos()])
    data = ListDataset([line.clone() for _ in range(2500)], np.full(2500, len(line)))
    ds = _xdae(d, data, mask_ratio=0.3)
    lengths = [n for i in range(len(ds)) for n in _masked_spans(ds[i]["source"], d, 100)]
    counts, probs = _poisson_cells(lengths)
    stat = _chi_square(counts, probs)
    assert stat < CHI2_999[9], (stat, counts)
    insertions = lengths.count(0)
    assert insertions > 0 and abs(insertions / len(lengths) - math.exp(-3)) < 0.01
    assert abs(sum(lengths) / (100 * len(ds)) - 0.3) < 0.01  # 30% of the words inside spans


def test_full_xdae_keeps_its_invariants_and_is_reproducible(vocab):
    d, words, _ = vocab
    data = _sentences(d, words, 300)
    ds = _xdae(d, data, shuffle_distance=3.0, drop_prob=0.3, mask_ratio=0.3)
    mask, originals = d.index("<mask>"), set(data[0].tolist())
    for i in range(len(ds)):
        item = ds[i]
        src = item["source"]
        assert src[0] == d.bos() and src[-1] == d.eos() and int((src == d.eos()).sum()) == 1
        assert set(src.tolist()) <= originals | {mask}
        assert torch.equal(item["target"], data[i][1:])
        assert torch.equal(ds[i]["source"], src)  # same (seed, epoch, index): same noise
    ds.set_epoch(2)
    assert sum(not torch.equal(ds[i]["source"], _xdae(d, data, shuffle_distance=3.0, drop_prob=0.3,
                                                       mask_ratio=0.3)[i]["source"]) for i in range(100)) > 50
    # a one-word text may lose its word: never a second </s> in its place
    one = ListDataset([torch.tensor([d.bos(), words[2][0], words[2][1], d.eos()])] * 200, np.full(200, 4))
    for i in range(200):
        src = _xdae(d, one, drop_prob=0.3, mask_ratio=0.3)[i]["source"]
        assert int((src == d.eos()).sum()) == 1 and src[-1] == d.eos()


def test_dic_zeroes_poisson_3_spans_of_regions():
    runs, covered = [], 0
    for i in range(3000):
        with data_utils.numpy_seed(11, 1, i):
            zeroed, (starts, lengths) = zero_region_spans(100, 0.3, 3.0)
        covered += int(zeroed.sum())
        # spans never touch, so each run of zeroed regions is one span (0-length spans leave no trace)
        edges = np.diff(np.concatenate([[0], zeroed.astype(int), [0]]))
        these = (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()
        assert these == lengths[lengths > 0].tolist()
        runs.extend(these)
    counts, probs = _poisson_cells(runs, first=1)
    stat = _chi_square(counts, probs)
    assert stat < CHI2_999[8], (stat, counts)
    assert abs(covered / (100 * 3000) - 0.3) < 0.01


def test_dic_items_zero_whole_regions_and_keep_boxes(tiny_world):
    store = RegionStore(os.path.join(tiny_world["data"], "regions", "train.json"))
    regions = RegionDataset(store)
    d = Dictionary()
    caps = ListDataset([torch.tensor([d.bos(), 5, 6, d.eos()])] * len(store), np.full(len(store), 4))
    rows, langs = np.arange(len(store)), np.zeros(len(store), dtype=np.int64)
    ic = CaptionGenerationDataset(caps, rows, langs, regions, d)
    dic = CaptionGenerationDataset(caps, rows, langs, regions, d, zero_spans=True, seed=3)
    zeroed_any = 0
    for i in range(len(store)):
        a, b = ic[i]["image"], dic[i]["image"]
        zero = b["features"].abs().sum(-1) == 0
        zeroed_any += int(zero.any())
        assert torch.equal(a["features"][~zero], b["features"][~zero])
        assert torch.equal(a["boxes"], b["boxes"])
        assert torch.equal(dic[i]["image"]["features"], b["features"])  # reproducible
    assert zeroed_any > len(store) // 3
    batch = dic.collater([dic[0], dic[1]])
    assert batch["net_input"]["src_tokens"].shape == (2, 0)
    assert batch["net_input"]["prev_output_tokens"][:, 0].eq(d.eos()).all()
    assert torch.equal(batch["target"][0], torch.tensor([5, 6, d.eos()]))


def test_span_sampler_never_cuts_spans_or_lets_them_touch():
    for n in (0, 1, 2, 5, 12):
        for i in range(300):
            with data_utils.numpy_seed(5, n, i):
                starts, lengths = sample_spans(n, 0.5, 3.0)
            ends = starts + lengths
            assert (ends <= n).all() and (starts >= 0).all()
            assert (starts[1:] > ends[:-1]).all()  # at least one free item between spans
