"""Every rate of pre-training, measured in the batches fairseq-train draws, and moved by its flag.

Each test builds the task from a command line as ``fairseq-train`` does (``parse_args_and_arch``,
``setup_task``, ``build_model``, ``load_dataset``, ``get_batch_iterator``, ``next_epoch_itr``) and
reads the collated batches, what the criterion gets. The expected numbers come from the paper
(xMLM/MMLM: 15% of tokens, 80/10/10; languages ~ n_l^alpha; MRM: 15% of regions, 90% of them
zeroed; VLM: 50% negatives, half text, half image; xDAE: drop 0.3, shuffle U(0, 3), Poisson(3)
spans; DIC: Poisson(3) spans of zeroed regions) and from the flags' documented meaning. Every rate
is measured with the defaults and again with its flag changed, so a flag that stops reaching the
datasets fairseq-train uses fails here. Items are told apart by the data folder itself (caption
lines and their image ids, the text corpus of each language, the region store), read back with
fairseq's readers, never through the task's own helpers.
"""
import math
import os
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from fairseq import options, tasks, utils
from fairseq.data import data_utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from scipy import stats

from m3p_fairseq.data.region_store import RegionStore

UNDERSTANDING = ["--arch", "m3p_tiny", "--criterion", "m3p_pretrain"]
GENERATION = ["--arch", "m3p_seq2seq_tiny", "--criterion", "m3p_generation"]
# fairseq's data_utils.numpy_seed(seed, epoch, index) seeds numpy with int(hash(...) % 1e6), a float
# modulo that keeps multiples of 64 only: 15,625 streams for every item of every epoch. Items share
# streams, so a share over n items spreads sqrt(1 + n / 15,625) times wider than independent draws.
STREAMS = 15625
CHI2_P = 1e-4  # a correct implementation fails a chi-square test one time in 10,000 (a little more, shared streams)
# fairseq drops an epoch's last batch when it is not a multiple of --required-batch-size-multiple
# (default 8; fairseq issue 5036): with items ordered by size, up to 7 of the longest of each
# objective. Counting samples per language needs every item of the epoch.
EVERY_ITEM = ["--required-batch-size-multiple", "1"]


def check_share(hits, draws, p, tol, what, items, sd=None):
    """hits / draws within ``tol`` of ``p``. The draws (over ``items`` seeded items) must make ``tol``
    at least 3 standard deviations (binomial unless ``sd`` is given, widened for shared streams), so
    that the test holds whatever the seed; a rate that misses by more than ``tol`` fails."""
    sd = (math.sqrt(p * (1 - p) / draws) if sd is None else sd) * math.sqrt(1 + items / STREAMS)
    assert tol >= 3 * sd, f"{what}: {draws} draws are too few for +-{tol} (sd {sd:.4f})"
    assert abs(hits / draws - p) < tol, f"{what}: {hits / draws:.4f}, expected {p:.4f} +- {tol} ({hits} of {draws})"
    print(f"{what}: {hits / draws:.4f} (expected {p:.4f} +- {tol}, {draws} draws)")


class TrainRun:
    """Task, model and training batches built from a fairseq-train command line, in the order
    fairseq_cli/train.py builds them; batches as Trainer.get_train_iterator draws them."""

    def __init__(self, data, *argv, task="multitask_multimodal"):
        parser = options.get_training_parser()
        args = options.parse_args_and_arch(parser, [
            data, "--user-dir", "m3p_fairseq", "--task", task, "--batch-size", "32", "--cpu", "--num-workers", "0",
            "--seed", "1", "--region-cache-mb", "64", *argv])  # the cache: each image read from disk once
        self.cfg = cfg = convert_namespace_to_omegaconf(args)
        np.random.seed(cfg.common.seed)
        utils.set_torch_seed(cfg.common.seed)
        self.task = tasks.setup_task(cfg.task)
        self.model = self.task.build_model(cfg.model)
        self.criterion = self.task.build_criterion(cfg.criterion)
        self.task.load_dataset(cfg.dataset.train_subset, epoch=1, combine=True)
        self.dictionary = self.task.source_dictionary

    def batches(self, epochs=1):
        cfg, task = self.cfg, self.task
        for epoch in range(1, epochs + 1):
            itr = task.get_batch_iterator(
                dataset=task.dataset(cfg.dataset.train_subset), max_tokens=cfg.dataset.max_tokens,
                max_sentences=cfg.dataset.batch_size,
                max_positions=utils.resolve_max_positions(task.max_positions(), self.model.max_positions(),
                                                          cfg.dataset.max_tokens),
                ignore_invalid_inputs=True, required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
                seed=cfg.common.seed + epoch if cfg.dataset.update_ordered_indices_seed else cfg.common.seed,
                num_shards=1, shard_id=0, num_workers=cfg.dataset.num_workers, epoch=epoch,
                data_buffer_size=cfg.dataset.data_buffer_size, disable_iterator_cache=False,
                skip_remainder_batch=cfg.optimization.skip_remainder_batch,
                grouped_shuffling=cfg.dataset.grouped_shuffling,
                update_epoch_batch_itr=cfg.dataset.update_epoch_batch_itr)
            for batch in itr.next_epoch_itr(shuffle=True, fix_batches_to_gpus=False):
                if batch:
                    yield batch


# ---- the data folder, read back with fairseq's readers -----------------------------------------------

def corpus_lines(data, dictionary, *parts):
    """Token lines (each ending in </s>) of DATA/parts/.../{split}.bin as tuples."""
    ds = data_utils.load_indexed_dataset(os.path.join(data, *parts), dictionary, combine=False)
    assert ds is not None, os.path.join(data, *parts)
    return [tuple(ds[i].tolist()) for i in range(len(ds))]


class Captions:
    """English training captions, their image ids and the region store's arrays of those images."""

    def __init__(self, data, dictionary, lang="en", split="train", folder="captions"):
        self.lines = corpus_lines(data, dictionary, folder, lang, split)
        with open(os.path.join(data, folder, lang, f"{split}.ids")) as f:
            self.image_ids = [line.strip() for line in f]
        self.store = RegionStore(os.path.join(data, "regions", f"{split}.json"))
        self.bos = dictionary.bos()
        self.images_of_text = defaultdict(set)  # caption text -> the images it describes
        for line, image in zip(self.lines, self.image_ids):
            self.images_of_text[line].add(image)
        self._features = {}
        self.image_of_features = {}
        for row in range(len(self.store)):
            feats = self.features(self.store.image_ids[row])
            self.image_of_features[feats.numpy().tobytes()] = self.store.image_ids[row]

    def features(self, image_id):
        if image_id not in self._features:
            self._features[image_id] = torch.from_numpy(self.store.get(self.store.index_of(image_id))["features"])
        return self._features[image_id]

    def text(self, index):
        """Caption ``index`` as the model reads it: <s> ... </s>."""
        return (self.bos,) + self.lines[index]


def rows(tokens, lengths):
    """The unpadded rows of a right-padded batch tensor, as lists."""
    return [tokens[i, : int(n)].tolist() for i, n in enumerate(lengths)]


def regions_of(batch, i):
    n = int((~batch["net_input"]["region_padding_mask"][i]).sum())
    return batch["net_input"]["regions"][i, :n]


# ---- masked LM: xMLM and MMLM ------------------------------------------------------------------------

def masking_counts(batches, dictionary, mask_idx, originals=None):
    """Selected / [MASK] / random / kept counts over every token of the masked-LM batches, and the
    original rows (target where selected, else the input). ``originals`` collects those rows."""
    pad = dictionary.pad()
    c = Counter()
    for b in batches:
        src, tgt = b["net_input"]["src_tokens"], b["target"]
        real = src.ne(pad)
        sel = tgt.ne(pad)
        assert not (sel & ~real).any(), "a target outside the text"
        c["tokens"] += int(real.sum())
        c["rows"] += len(src)
        c["selected"] += int(sel.sum())
        c["mask"] += int((src.eq(mask_idx) & sel).sum())
        c["kept"] += int((src.eq(tgt) & sel).sum())
        c["random"] += int((src.ne(mask_idx) & src.ne(tgt) & sel).sum())
        if originals is not None:
            orig = torch.where(sel, tgt, src)
            originals.extend((int(i), row) for i, row in zip(b["id"], rows(orig, b["net_input"]["src_lengths"])))
    return c


def check_masking(c, mask_prob, leave_unmasked_prob, random_token_prob, vocab, tol, flags):
    """Rates within ``tol``: selected share, then [MASK] / random / kept shares of the selected.
    fairseq draws a random token over the vocabulary without its special symbols, <mask> included,
    so a random draw lands on the original token or on <mask> with probability 1 / vocab each.
    The count selected per sequence is mask_prob * length rounded up or down at random: its variance
    is at most 1/4 a sequence."""
    what = f"{{}} ({' '.join(flags) or 'defaults'})"
    check_share(c["selected"], c["tokens"], mask_prob, tol, what.format("tokens selected"), c["rows"],
                sd=math.sqrt(c["rows"] / 4) / c["tokens"])
    expected = {"mask": 1 - leave_unmasked_prob - random_token_prob + random_token_prob / vocab,
                "random": random_token_prob * (1 - 2.0 / vocab), "kept": leave_unmasked_prob + random_token_prob / vocab}
    for k, v in expected.items():
        check_share(c[k], c["selected"], v, tol, what.format(f"selected tokens {k}"), c["rows"])


MASK_FLAGS = [([], (0.15, 0.1, 0.1)),
              (["--mask-prob", "0.3", "--leave-unmasked-prob", "0.25", "--random-token-prob", "0.15"], (0.3, 0.25, 0.15))]


@pytest.mark.parametrize("flags,rates", MASK_FLAGS, ids=["paper", "flags"])
def test_xmlm_masking_rates(tiny_world, flags, rates):
    """xMLM: 15% of the tokens selected, of those 80% [MASK], 10% random, 10% kept (within 1%);
    the masked text is the corpus' text."""
    run = TrainRun(tiny_world["data"], *UNDERSTANDING, "--objectives", "xmlm", *flags)
    d = run.dictionary
    originals = []
    c = masking_counts(run.batches(epochs=2), d, d.index("<mask>"), originals)
    check_masking(c, *rates, vocab=len(d) - d.nspecial, tol=0.01, flags=flags)
    # blocks of whole corpus lines: every line of every block is a line of the text corpus
    langs = sorted(os.listdir(os.path.join(tiny_world["data"], "text")))
    known = {line for lang in langs for line in corpus_lines(tiny_world["data"], d, "text", lang, "train")}
    for _, row in originals[:200]:
        assert row[0] == d.bos()
        for line in split_at_eos(row[1:], d.eos()):
            assert line in known, "an xMLM block holds text that is not a corpus line"


def split_at_eos(tokens, eos):
    lines, cur = [], []
    for t in tokens:
        cur.append(t)
        if t == eos:
            lines.append(tuple(cur))
            cur = []
    assert not cur, "a block does not end with </s>"
    return lines


def language_of_lines(data, dictionary, langs):
    owner = defaultdict(set)
    for lang in langs:
        for line in corpus_lines(data, dictionary, "text", lang, "train"):
            owner[line].add(lang)
    return owner


def print_shares(what, langs, seen, expected, alpha):
    print(f"{what} per language (--alpha {alpha or 'default'}): " + ", ".join(
        f"{l} {s:.4f}/{e:.4f}" for l, s, e in zip(langs, seen, expected)) + " (seen/expected)")


def alpha_shares(sizes, alpha):
    q = np.asarray(sizes, dtype=float) / np.sum(sizes)
    return q ** alpha / np.sum(q ** alpha)


def xmlm_language_counts(run, data, langs, shared_lines=False):
    """Per language, the xMLM samples of one epoch (a sample's lines name its language). With ``shared_lines``, a
    sample that several languages' corpora hold as it is (a question of only shared words, "how many objects are
    there" in en and de) is left out."""
    d = run.dictionary
    owner = language_of_lines(data, d, langs)
    originals = []
    masking_counts(run.batches(), d, d.index("<mask>"), originals)
    counts = Counter()
    for _, row in originals:
        found = set(langs)
        for line in split_at_eos(row[1:], d.eos()):
            found &= owner[line]
        if shared_lines and len(found) > 1:
            continue
        assert len(found) == 1, f"cannot tell the language of an xMLM sample ({sorted(found)})"
        counts[found.pop()] += 1
    return np.array([counts[l] for l in langs], dtype=float)


@pytest.mark.parametrize("alpha", [None, "0.7"], ids=["paper", "flag"])
def test_xmlm_language_shares_follow_alpha(tiny_world, alpha):
    """One line per sample (--sample-break-mode eos): language l makes up n_l^alpha / sum n^alpha
    of an epoch (within 1%), n_l its corpus lines; alpha 0.3 unless --alpha says otherwise. (Lines that several
    languages' corpora hold, questions of shared words only, are left out of the count and of the expectation:
    language l's share of what is left, n_l^alpha u_l / n_l, u_l its lines no other language has, normalised.)"""
    data = tiny_world["data"]
    langs = sorted(os.listdir(os.path.join(data, "text")))
    flags = ["--alpha", alpha] if alpha else []
    run = TrainRun(data, *UNDERSTANDING, "--objectives", "xmlm", "--sample-break-mode", "eos", *EVERY_ITEM, *flags)
    lines = {l: corpus_lines(data, run.dictionary, "text", l, "train") for l in langs}
    owner = language_of_lines(data, run.dictionary, langs)
    sizes = np.array([len(lines[l]) for l in langs], dtype=float)
    own = np.array([sum(owner[line] == {l} for line in lines[l]) for l in langs]) / sizes
    assert own.min() > 0.9  # few lines are shared
    counts = xmlm_language_counts(run, data, langs, shared_lines=True)
    expected = alpha_shares(sizes, float(alpha or 0.3)) * own
    expected /= expected.sum()
    seen = counts / counts.sum()
    print_shares("xMLM lines", langs, seen, expected, alpha)
    assert np.abs(seen - expected).max() < 0.01, (dict(zip(langs, seen.round(4))), dict(zip(langs, expected.round(4))))
    # and far from the natural shares (alpha 1): the test can tell
    assert np.abs(seen - alpha_shares(sizes, 1.0)).max() > 0.05


def test_xmlm_language_shares_of_blocks(tiny_world):
    """The default blocks of lines: at --alpha 1 an epoch holds every language's n_l blocks as they
    are; at the paper's 0.3 their shares are n_l^0.3 / sum n^0.3 (within 1%)."""
    data = tiny_world["data"]
    langs = sorted(os.listdir(os.path.join(data, "text")))
    natural = xmlm_language_counts(TrainRun(data, *UNDERSTANDING, "--objectives", "xmlm", "--alpha", "1", *EVERY_ITEM),
                                   data, langs)
    counts = xmlm_language_counts(TrainRun(data, *UNDERSTANDING, "--objectives", "xmlm", *EVERY_ITEM), data, langs)
    seen, expected = counts / counts.sum(), alpha_shares(natural, 0.3)
    print_shares("xMLM blocks", langs, seen, expected, None)
    assert np.abs(seen - expected).max() < 0.01, (dict(zip(langs, seen.round(4))), dict(zip(langs, expected.round(4))))
    assert np.abs(seen - natural / natural.sum()).max() > 0.05


@pytest.mark.parametrize("flags,rates", MASK_FLAGS, ids=["paper", "flags"])
def test_mmlm_masks_caption_tokens_and_leaves_regions(tiny_world, flags, rates):
    """MMLM: the English caption masked at the xMLM rates (within 1.5%: fewer tokens), its
    image's regions exactly the store's arrays."""
    data = tiny_world["data"]
    run = TrainRun(data, *UNDERSTANDING, "--objectives", "mmlm", *flags)
    d = run.dictionary
    caps = Captions(data, d)
    originals = []

    def checked():
        for b in run.batches(epochs=10):  # (the world's captions are ~7 pieces: 8 epochs drew too few for 1.5%)
            assert b["objective"] == "mmlm"
            for i, index in enumerate(b["id"].tolist()):
                assert torch.equal(regions_of(b, i), caps.features(caps.image_ids[index])), \
                    "MMLM changed an image's regions"
            yield b

    c = masking_counts(checked(), d, d.index("<mask>"), originals)
    check_masking(c, *rates, vocab=len(d) - d.nspecial, tol=0.015, flags=flags)
    assert all(tuple(row) == caps.text(i) for i, row in originals), "the masked text is not the item's caption"


# ---- MRM -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,mrm_prob,zero_prob", [([], 0.15, 0.9), (["--mrm-prob", "0.4", "--mrm-zero-prob", "0.5"], 0.4, 0.5)],
                         ids=["paper", "flags"])
def test_mrm_masks_regions_at_the_rate(tiny_world, flags, mrm_prob, zero_prob):
    """MRM: 15% of the regions masked (within 1%); 90% of the masked ones zero in net_input (within
    2%), the others and every unmasked region equal to the store's feature; regression targets
    the raw features; the caption untouched."""
    data = tiny_world["data"]
    run = TrainRun(data, *UNDERSTANDING, "--objectives", "mrm", *flags)
    caps = Captions(data, run.dictionary)
    regions = masked = zeroed = images = 0
    for b in run.batches(epochs=8):
        assert b["objective"] == "mrm"
        m = b["masked_regions"]
        assert not (m & b["net_input"]["region_padding_mask"]).any(), "a masked region is padding"
        targets = []
        for i, (index, text) in enumerate(zip(b["id"].tolist(), rows(b["net_input"]["src_tokens"],
                                                                         b["net_input"]["src_lengths"]))):
            assert tuple(text) == caps.text(index), "MRM changed the caption"
            raw, fed = caps.features(caps.image_ids[index]), regions_of(b, i)
            mi = m[i, : len(raw)]
            is_zero = fed.eq(0).all(-1)
            assert torch.equal(fed[~is_zero], raw[~is_zero]), "a region fed to the model is neither zero nor raw"
            assert not (is_zero & ~mi).any(), "an unmasked region was zeroed"
            regions += len(raw)
            images += 1
            masked += int(mi.sum())
            zeroed += int((is_zero & mi).sum())
            targets.append(raw[mi])
        assert torch.equal(b["mrm_feat_target"], torch.cat(targets)), "MRM regresses something else than the raw features"
    what = f"{{}} ({' '.join(flags) or 'defaults'})"
    # per image, mrm_prob * regions rounded up or down at random, as tokens are: variance at most 1/4
    check_share(masked, regions, mrm_prob, 0.01, what.format("regions masked"), images, sd=math.sqrt(images / 4) / regions)
    check_share(zeroed, masked, zero_prob, 0.02, what.format("masked regions zeroed"), images)


# ---- VLM -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,negative,text_share", [([], 0.5, 0.5),
                                                       (["--vlm-negative-prob", "0.3", "--vlm-text-negative-prob", "0.8"], 0.3, 0.8)],
                         ids=["paper", "flags"])
def test_vlm_negatives(tiny_world, flags, negative, text_share):
    """VLM over >= 2,000 draws: 50% negatives (within 2%), half of them replacing the text (within
    3%); a positive is the item's own caption and image; a negative replaces exactly one side, by
    another image's caption or another image's regions, and says so in its label."""
    data = tiny_world["data"]
    run = TrainRun(data, *UNDERSTANDING, "--objectives", "vlm", *flags)
    caps = Captions(data, run.dictionary)
    kinds = Counter()
    for b in run.batches(epochs=19):
        assert b["objective"] == "vlm"
        texts = rows(b["net_input"]["src_tokens"], b["net_input"]["src_lengths"])
        for i, (index, label) in enumerate(zip(b["id"].tolist(), b["vlm_target"].tolist())):
            own_image = caps.image_ids[index]
            text, fed = tuple(texts[i]), regions_of(b, i)
            same_text, same_image = text == caps.text(index), torch.equal(fed, caps.features(own_image))
            if label == 1.0:
                assert same_text and same_image, "a positive pair is not the item's caption and image"
                kinds["positive"] += 1
            elif same_image:  # the text replaced: by a caption of another image
                assert text[0] == caps.bos and any(im != own_image for im in caps.images_of_text[text[1:]]), \
                    "a text negative's caption is not another image's"
                kinds["text"] += 1
            else:  # the image replaced: by another image's regions, the caption kept
                other = caps.image_of_features.get(fed.numpy().tobytes())
                assert same_text and other is not None and other != own_image, "an image negative is not another image"
                kinds["image"] += 1
    draws = sum(kinds.values())
    neg = kinds["text"] + kinds["image"]
    assert draws >= 2000, kinds
    what = f"{{}} ({' '.join(flags) or 'defaults'})"
    check_share(neg, draws, negative, 0.02, what.format("VLM pairs negative"), draws)
    check_share(kinds["text"], neg, text_share, 0.03, what.format("VLM negatives replacing the text"), draws)


# ---- retrieval pairs: the m3p_retrieval task, and ret, the same fine-tuning as an objective ----------------

@pytest.mark.parametrize("task,flags,negatives,text_share", [
    ("m3p_retrieval", [], 3, 0.5),
    ("multitask_multimodal", ["--objectives", "ret"], 3, 0.5),
    ("multitask_multimodal", ["--objectives", "ret", "--num-negatives", "5", "--text-negative-prob", "0.8"], 5, 0.8),
], ids=["task", "objective", "objective-flags"])
def test_retrieval_negatives(tiny_world, task, flags, negatives, text_share):
    """Each caption comes with its image, then --num-negatives pairs (the paper: 3), each replacing one
    side: the text by a caption of another image (--text-negative-prob of them, within 4%), else the image
    by another image's regions; the labels say which pair is the positive. The dual encoder sees each
    positive once: its caption alone, its image's row."""
    data = tiny_world["data"]
    criterion = "m3p_retrieval" if task == "m3p_retrieval" else "m3p_pretrain"
    run = TrainRun(data, "--arch", "m3p_tiny", "--criterion", criterion, "--caption-langs", "en", *flags, task=task)
    caps = Captions(data, run.dictionary)
    group, kinds = negatives + 1, Counter()
    for b in run.batches(epochs=2):
        assert b.get("objective", "ret") == "ret"
        ids = b["id"].tolist()
        assert len(b["vlm_target"]) == group * len(ids)
        texts = rows(b["net_input"]["src_tokens"], b["net_input"]["src_lengths"])
        dual = rows(b["dual"]["src_tokens"], b["dual"]["src_tokens"].ne(run.dictionary.pad()).sum(1))
        assert [tuple(t) for t in dual] == [caps.text(i) for i in ids]
        for p, label in enumerate(b["vlm_target"].tolist()):
            index = ids[p // group]
            own_image = caps.image_ids[index]
            text, fed = tuple(texts[p]), regions_of(b, p)
            same_text, same_image = text == caps.text(index), torch.equal(fed, caps.features(own_image))
            if p % group == 0:
                assert label == 1.0 and same_text and same_image, "the first pair is not the item's caption and image"
                kinds["positive"] += 1
                continue
            assert label == 0.0, "a negative pair is labelled a match"
            if same_image:
                assert any(im != own_image for im in caps.images_of_text[text[1:]]), "a text negative is its own"
                kinds["text"] += 1
            else:
                other = caps.image_of_features.get(fed.numpy().tobytes())
                assert same_text and other is not None and other != own_image, "an image negative is not another image"
                kinds["image"] += 1
    neg = kinds["text"] + kinds["image"]
    assert neg == negatives * kinds["positive"] and neg >= 1500, kinds
    check_share(kinds["text"], neg, text_share, 0.04, f"retrieval negatives replacing the text ({task} "
                f"{' '.join(flags)})", neg)


# ---- xDAE ----------------------------------------------------------------------------------------------

class Words:
    """Sentencepiece words, as the paper's word noise sees them: a word starts at a piece with a
    leading '▁', at the first token and after a special symbol; special symbols (<mask>) stand alone."""

    def __init__(self, dictionary):
        self.starts = np.array([s.startswith("\u2581") for s in dictionary.symbols], dtype=bool)
        self.special = np.zeros(len(dictionary), dtype=bool)
        self.special[: dictionary.nspecial] = True
        self.mask = dictionary.index("<mask>")
        self.special[self.mask] = True

    def split(self, tokens):
        out = []
        for i, t in enumerate(tokens):
            if i == 0 or self.starts[t] or self.special[t] or self.special[tokens[i - 1]]:
                out.append([t])
            else:
                out[-1].append(t)
        return [tuple(w) for w in out]


def xdae_pairs(run, epochs=1):
    """(source words, target words, source language) of every xDAE item: source without <s> </s>,
    target without </s>."""
    words = Words(run.dictionary)
    bos, eos = run.dictionary.bos(), run.dictionary.eos()
    for b in run.batches(epochs):
        assert b["objective"] == "xdae"
        src = rows(b["net_input"]["src_tokens"], b["net_input"]["src_lengths"])
        tgt = rows(b["target"], b["target"].ne(run.dictionary.pad()).sum(1))
        for s, t, lang in zip(src, tgt, b["net_input"]["src_lang"].tolist()):
            assert s[0] == bos and s[-1] == eos and t[-1] == eos and eos not in s[1:-1] + t[:-1]
            yield words.split(s[1:-1]), words.split(t[:-1]), lang


def xdae_run(data, *flags):
    return TrainRun(data, *GENERATION, "--objectives", "xdae", *flags)


@pytest.mark.parametrize("drop", [None, "0.5"], ids=["paper", "flag"])
def test_xdae_drops_words_at_the_rate(tiny_world, drop):
    """Word dropout alone (no shuffle, no spans): each word dropped with p = 0.3 (within 1%), the
    rest in order. A sentence that loses every word gets one of its tokens back (fairseq's
    WordDropout; </s> drawn means none): w words keep (1 - p) w + p^w (1 - 1 / tokens) on average."""
    p = float(drop or 0.3)
    run = xdae_run(tiny_world["data"], "--xdae-shuffle-distance", "0", "--xdae-mask-ratio", "0",
                   *(["--xdae-drop-prob", drop] if drop else []))
    total = kept = expected_kept = sentences = 0
    for src, tgt, _ in xdae_pairs(run, epochs=2):
        w, tokens = len(tgt), sum(map(len, tgt)) + 1
        sentences += 1
        total += w
        kept += len(src)
        expected_kept += (1 - p) * w + p ** w * (1 - 1 / tokens)
        if len(src) > 1:
            it = iter(tgt)
            assert all(word in it for word in src), "the kept words are not the sentence's words in order"
    check_share(total - kept, total, 1 - expected_kept / total, 0.01, f"xDAE words dropped (--xdae-drop-prob {drop})",
                sentences)


def displacements(src, tgt):
    """How far each word moved, matching repeated words in order (the matching with the least movement)."""
    where = defaultdict(list)
    for j, w in enumerate(src):
        where[w].append(j)
    seen = Counter()
    out = []
    for i, w in enumerate(tgt):
        out.append(abs(where[w][seen[w]] - i))
        seen[w] += 1
    return out


@pytest.mark.parametrize("k", [None, "4"], ids=["paper", "flag"])
def test_xdae_shuffle_distance(tiny_world, k):
    """Shuffle alone: positions + U(0, k) noise, sorted. Words i < j swap only if j - i < k, so a
    word moves at most ceil(k) - 1 positions: 2 for the paper's k = 3 (and some words move exactly
    2), 3 for k = 4. Words stay whole."""
    dist = float(k or 3)
    run = xdae_run(tiny_world["data"], "--xdae-drop-prob", "0", "--xdae-mask-ratio", "0",
                   *(["--xdae-shuffle-distance", k] if k else []))
    moves = Counter()
    for src, tgt, _ in xdae_pairs(run):
        assert Counter(src) == Counter(tgt), "shuffling changed the words"
        moves.update(displacements(src, tgt))
    allowed = math.ceil(dist) - 1
    print(f"xDAE word moves, k = {dist}: {dict(sorted(moves.items()))}")
    assert max(moves) == allowed and moves[allowed] >= 20, \
        f"word moves {dict(sorted(moves.items()))}; k = {dist} allows {allowed} (--xdae-shuffle-distance {k})"
    assert sum(v for m, v in moves.items() if m > 0) / sum(moves.values()) > 0.2


def poisson_pmf(lam, upto):
    return np.array([math.exp(-lam) * lam ** k / math.factorial(k) for k in range(upto + 1)])


def one_span_expectation(sizes, ratio, lam, first):
    """The documented span rule (ratio * n / lambda spans, rounded up or down at random; Poisson(lambda)
    lengths; a span that does not fit dropped whole) where it draws at most one span (ratio * n <= lambda):
    a span of length k <= n with probability (ratio * n / lambda) * Poisson(k). Returns, summed over the
    sequences of ``sizes`` items, the expected count of spans of each length from ``first`` on, and the
    mean and variance of the items they cover."""
    sizes = np.asarray(sizes)
    assert (ratio * sizes <= lam).all(), "more than one span: the closed form does not apply"
    top = int(sizes.max())
    pmf = poisson_pmf(lam, top)
    k = np.arange(top + 1)
    hist = np.zeros(top + 1)
    mean = var = 0.0
    for n, count in Counter(sizes.tolist()).items():
        p = ratio * n / lam * pmf[: n + 1]
        hist[: n + 1] += count * p
        m1, m2 = (p * k[: n + 1]).sum(), (p * k[: n + 1] ** 2).sum()
        mean += count * m1
        var += count * (m2 - m1 ** 2)
    hist[:first] = 0
    return hist, mean, var


def chi_square_lengths(lengths, expected_hist, first):
    """Pearson's chi-square of observed span lengths against expected counts; cells from ``first``,
    the tail pooled so that every cell expects at least 5."""
    observed = np.bincount(np.asarray(lengths, dtype=int), minlength=len(expected_hist))[: len(expected_hist)]
    exp = expected_hist[first:]
    obs = observed[first:].astype(float)
    cut = len(exp)
    while cut > 1 and exp[cut - 1:].sum() < 5:
        cut -= 1
    exp = np.append(exp[: cut - 1], exp[cut - 1:].sum())
    obs = np.append(obs[: cut - 1], obs[cut - 1:].sum())
    exp *= obs.sum() / exp.sum()  # the span count is tested on its own
    stat = float(((obs - exp) ** 2 / exp).sum())
    return stat, stats.chi2.ppf(1 - CHI2_P, len(exp) - 1), obs, exp


def check_spans(what, flags, sizes, lengths, covered, ratio, lam, first):
    """Spans seen over sequences of ``sizes`` items against the rule: the items they cover within 4 sd,
    their lengths from ``first`` on (a DIC span of 0 regions is invisible) by a chi-square test.
    Returns the expected count of spans of each length."""
    hist, mean, var = one_span_expectation(sizes, ratio, lam, first)
    sd = math.sqrt(var * (1 + len(sizes) / STREAMS))
    stat, critical, obs, exp = chi_square_lengths(lengths, hist, first)
    where = f"{what} ({' '.join(flags) or 'defaults'})"
    print(f"{where}: {len(lengths)} covering {covered} (expected {mean:.0f} +- {sd:.0f}); lengths from {first} "
          f"{obs.astype(int).tolist()} vs {exp.round(1).tolist()}, chi-square {stat:.1f} < {critical:.1f}")
    assert abs(covered - mean) < 4 * sd, f"{where}: they cover {covered}, expected {mean:.0f} +- {sd:.0f}"
    assert stat < critical, f"{where}: lengths {obs.tolist()} vs Poisson({lam}) {exp.round(1).tolist()}"
    return hist


SPAN_FLAGS = [([], 0.3, 3.0), (["--xdae-poisson-lambda", "6"], 0.3, 6.0), (["--xdae-mask-ratio", "0.15"], 0.15, 3.0)]


@pytest.mark.parametrize("flags,ratio,lam", SPAN_FLAGS, ids=["paper", "lambda", "ratio"])
def test_xdae_mask_spans(tiny_world, flags, ratio, lam):
    """Span infilling alone: spans of words, Poisson(3) lengths (0-length spans insert a <mask>),
    each replaced by one <mask>. Sentences with ratio * words <= lambda draw at most one span, so
    every <mask> stands for the words missing around it; lengths pass a chi-square test against
    Poisson(lambda) (capped at the sentence), span count and covered words within 4 sd."""
    run = xdae_run(tiny_world["data"], "--xdae-shuffle-distance", "0", "--xdae-drop-prob", "0", *flags)
    mask = Words(run.dictionary).mask
    sizes, lengths, covered = [], [], 0
    for src, tgt, _ in xdae_pairs(run):
        n = len(tgt)
        if ratio * n > lam:
            continue
        sizes.append(n)
        masks = [j for j, w in enumerate(src) if w == (mask,)]
        assert len(masks) <= 1, "two spans where the rule draws at most one"
        if masks:
            j = masks[0]
            length = n - (len(src) - 1)
            assert src[:j] == tgt[:j] and src[j + 1:] == tgt[j + length:], "a <mask> does not replace one span"
            lengths.append(length)
            covered += length
        else:
            assert src == tgt, "words vanished without a <mask>"
    assert len(lengths) > 500, len(lengths)
    hist = check_spans("xDAE spans of words", flags, sizes, lengths, covered, ratio, lam, first=0)
    p = ratio * np.asarray(sizes) / lam * stats.poisson.cdf(sizes, lam)  # one span, and it fits
    sd = math.sqrt((1 + len(sizes) / STREAMS) * (p * (1 - p)).sum())
    assert abs(len(lengths) - hist.sum()) < 4 * sd, \
        f"{len(lengths)} spans, expected {hist.sum():.0f} +- {sd:.0f} (flags {flags or 'defaults'})"


@pytest.mark.parametrize("alpha", [None, "0.7"], ids=["paper", "flag"])
def test_xdae_language_shares_follow_alpha(tiny_world, alpha):
    """xDAE samples sentences of every language as xMLM does: shares n_l^alpha / sum n^alpha (within
    1%), read off the batches' language ids (the model's --langs order). With the three noises at
    once, the source holds the sentence's words (fewer, reordered) and <mask>s only."""
    data = tiny_world["data"]
    run = xdae_run(data, *EVERY_ITEM, *(["--alpha", alpha] if alpha else []))
    model_langs = run.cfg.model.langs.split(",")
    langs = sorted(os.listdir(os.path.join(data, "text")))
    sizes = [len(corpus_lines(data, run.dictionary, "text", l, "train")) for l in langs]
    mask = (run.dictionary.index("<mask>"),)
    counts = Counter()
    for src, tgt, lang in xdae_pairs(run):
        counts[model_langs[lang]] += 1
        words = Counter(w for w in src if w != mask)
        # one word left may be the piece fairseq's WordDropout gives back to a sentence that lost all
        assert sum(words.values()) <= 1 or not words - Counter(tgt), "a noised source holds words its sentence does not"
    seen = np.array([counts[l] for l in langs], dtype=float)
    seen /= seen.sum()
    expected = alpha_shares(sizes, float(alpha or 0.3))
    print_shares("xDAE sentences", langs, seen, expected, alpha)
    assert sum(counts.values()) == sum(counts[l] for l in langs)
    assert np.abs(seen - expected).max() < 0.01, (dict(zip(langs, seen.round(4))), dict(zip(langs, expected.round(4))))


# ---- IC and DIC ----------------------------------------------------------------------------------------

DIC_FLAGS = [([], 0.3, 3.0), (["--dic-mask-ratio", "0.15"], 0.15, 3.0), (["--dic-poisson-lambda", "6"], 0.3, 6.0)]


@pytest.mark.parametrize("flags,ratio,lam", DIC_FLAGS, ids=["paper", "ratio", "lambda"])
def test_dic_zeroes_region_spans(tiny_world, flags, ratio, lam):
    """DIC: runs of regions (the store's order) replaced by zero vectors, Poisson(3) lengths, the rest
    of each image the store's arrays, the caption the target. These images have at most 10 regions:
    at most one span each (ratio * regions <= lambda), so the runs are the spans; their lengths pass a
    chi-square test against Poisson(lambda) (capped at the image, 0 invisible) and the zeroed regions
    are within 4 sd of the expected count."""
    data = tiny_world["data"]
    run = TrainRun(data, *GENERATION, "--objectives", "dic", *flags)
    caps = Captions(data, run.dictionary)
    sizes, lengths, zeroed = [], [], 0
    for b in run.batches(epochs=6):
        assert b["objective"] == "dic"
        targets = rows(b["target"], b["target"].ne(run.dictionary.pad()).sum(1))
        for i, index in enumerate(b["id"].tolist()):
            assert tuple(targets[i]) == caps.lines[index], "the target is not the image's caption"
            raw, fed = caps.features(caps.image_ids[index]), regions_of(b, i)
            assert not raw.eq(0).all(-1).any()
            is_zero = fed.eq(0).all(-1)
            assert torch.equal(fed[~is_zero], raw[~is_zero]), "a region is neither zeroed nor the store's"
            z = np.flatnonzero(is_zero.numpy())
            if len(z):
                assert z[-1] - z[0] + 1 == len(z), "zeroed regions do not form one span"
                lengths.append(len(z))
            sizes.append(len(raw))
            zeroed += len(z)
    assert len(lengths) > 500, len(lengths)
    check_spans(f"DIC spans of regions (of {sum(sizes)})", flags, sizes, lengths, zeroed, ratio, lam, first=1)


def test_ic_feeds_the_store_regions(tiny_world):
    """IC: every region as stored, the caption the target."""
    data = tiny_world["data"]
    run = TrainRun(data, *GENERATION, "--objectives", "ic")
    caps = Captions(data, run.dictionary)
    n = 0
    for b in run.batches():
        targets = rows(b["target"], b["target"].ne(run.dictionary.pad()).sum(1))
        for i, index in enumerate(b["id"].tolist()):
            assert tuple(targets[i]) == caps.lines[index]
            assert torch.equal(regions_of(b, i), caps.features(caps.image_ids[index]))
            n += 1
    assert n == len(caps.lines)


# ---- MILD: retrieval with the image's context ------------------------------------------------------------

def test_mild_context_travels_with_its_image(tiny_world):
    """m3p_retrieval --context (MILD): every pair's text is the query, then the context of the pair's
    image: a positive and a text negative the item's own image's context, an image negative the context
    of the image it brings. The model's scores of the same pairs change when the context is left out."""
    data = os.path.join(tiny_world["data"], "mild_corpus")
    argv = ["--arch", "m3p_tiny", "--criterion", "m3p_retrieval", "--caption-langs", "en"]
    run = TrainRun(data, *argv, "--context", task="m3p_retrieval")
    plain = TrainRun(data, *argv, task="m3p_retrieval")
    d = run.dictionary
    queries = Captions(data, d)
    context_of = {}
    for line, image in zip(corpus_lines(data, d, "mild", "en", "context", "train"), queries.image_ids):
        context_of.setdefault(image, line)  # an image's context: that of its first query line
    group = run.cfg.task.num_negatives + 1
    model = run.model.eval()

    def scored(r):
        """(item id, pair) -> (text, image id, label, score)"""
        out = {}
        with torch.no_grad():
            for b in r.batches():
                scores = model(**b["net_input"], vlm=True)["vlm_logits"].tolist()
                texts = rows(b["net_input"]["src_tokens"], b["net_input"]["src_lengths"])
                for p, (text, label, score) in enumerate(zip(texts, b["vlm_target"].tolist(), scores)):
                    image = queries.image_of_features[regions_of(b, p).numpy().tobytes()]
                    out[int(b["id"][p // group]), p % group] = (tuple(text), image, label, score)
        return out

    with_context, without = scored(run), scored(plain)
    assert with_context.keys() == without.keys() and len(with_context) == group * len(queries.lines)
    kinds, changed = Counter(), 0
    for (index, p), (text, image, label, score) in with_context.items():
        own = queries.image_ids[index]
        end = text.index(d.eos()) + 1
        query, context = text[:end], text[end:]
        assert context == (d.eos(),) + context_of[image], "a pair's context is not its image's"
        if label == 1.0:
            assert query == queries.text(index) and image == own
            kinds["positive"] += 1
        elif image == own:
            assert any(im != own for im in queries.images_of_text[query[1:]]), "a text negative's query is its own"
            kinds["text"] += 1
        else:
            assert query == queries.text(index), "an image negative changed the query"
            kinds["image"] += 1
        plain_text, plain_image, plain_label, plain_score = without[index, p]
        assert (plain_text, plain_image, plain_label) == (query, image, label), "the two runs drew other pairs"
        changed += score != plain_score
    assert kinds["image"] > 100 and kinds["text"] > 100, kinds
    # an untrained model: its scores move little, but every one of them moves
    print(f"MILD pairs {dict(kinds)}; the context changed {changed} of {len(with_context)} scores")
    assert changed > 0.99 * len(with_context), f"the context changed {changed} of {len(with_context)} scores"
