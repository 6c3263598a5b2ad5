"""Downstream data and scoring without training: retrieval negatives, code-switching rates, two-stage
sharding, the downstream sets of the world, and bad input (one line each)."""
import os
import shutil

import numpy as np
import pytest
import torch
from fairseq import options, tasks
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from m3p_fairseq.data.code_switch import CodeSwitchDataset, build_table, find_dictionaries, read_dictionary
from m3p_fairseq.data.retrieval_dataset import IMAGE_REPLACED, POSITIVE, TEXT_REPLACED
from m3p_fairseq.errors import M3PInputError
from m3p_fairseq.evaluation.retrieval import recall_at_k, score_pairs
from m3p_fairseq.evaluation.two_stage import combine, merge_two_stage, shortlist, two_stage_scores
from preprocess.make_world import COLOUR_AFTER, COLOURS, NTG_LANGS, OBJECTS, world_lexicon


def setup(data, *argv, arch="m3p_tiny"):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data, "--arch", arch, "--cpu", *argv])
    cfg = convert_namespace_to_omegaconf(args)
    return tasks.setup_task(cfg.task), cfg


@pytest.fixture(scope="module")
def retrieval_task(tiny_world):
    return setup(tiny_world["data"], "--task", "m3p_retrieval", "--criterion", "m3p_retrieval", "--caption-langs", "en,de")


def test_negatives_three_per_positive_with_one_side_replaced(retrieval_task):
    task, _ = retrieval_task
    task.load_dataset("train")
    ds = task.dataset("train")
    rows, groups = ds.image_rows, ds.groups
    kinds = []
    for i in range(len(ds)):
        pairs = ds.sample_pairs(i)
        assert len(pairs) == 4 and pairs[0] == (i, rows[i], POSITIVE)
        for caption, row, kind in pairs[1:]:
            kinds.append(kind)
            if kind == TEXT_REPLACED:  # same image, a caption of another image in the same language
                assert row == rows[i] and rows[caption] != rows[i] and groups[caption] == groups[i]
            else:  # same caption, another image
                assert kind == IMAGE_REPLACED and caption == i and row != rows[i]
    assert abs(np.mean(np.array(kinds) == TEXT_REPLACED) - 0.5) < 0.05
    item = ds[5]
    assert item["labels"] == [1.0, 0.0, 0.0, 0.0]
    assert all(torch.equal(a, b) for a, b in zip(item["texts"], ds[5]["texts"]))  # seeded per (epoch, index)
    batch = ds.collater([ds[i] for i in range(6)])
    assert batch["net_input"]["src_tokens"].size(0) == 24 and batch["vlm_target"].sum() == 6
    assert batch["dual"]["pair_index"].tolist() == [0, 4, 8, 12, 16, 20]


def _english_captions(task):
    captions, _ = task.load_captions("en", "train")
    return captions


@pytest.mark.parametrize("sentence_ratio,word_ratio", [(0.8, 0.8), (0.5, 0.3)])
def test_code_switching_rates(retrieval_task, tiny_world, sentence_ratio, word_ratio):
    task, _ = retrieval_task
    captions = _english_captions(task)
    dicts = find_dictionaries(tiny_world["data"])
    table = build_table(dicts, task.dictionary, os.path.join(tiny_world["data"], "sentencepiece.bpe.model"))
    ds = CodeSwitchDataset(captions, task.dictionary, table, sentence_ratio, word_ratio, seed=4)
    sentences = drawn_sentences = candidates = switched = 0
    for epoch in range(1, 13):  # ~5,800 captions, ~35,000 translatable words
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            tokens, n_cand, n_switched, drawn = ds.switch(i)
            assert n_cand > 0  # every English word of the world but "left of"/"right of" is in the dictionaries
            sentences += 1
            if drawn:
                drawn_sentences += 1
                candidates += n_cand
                switched += n_switched
            else:
                assert torch.equal(tokens, captions[i])
    assert abs(drawn_sentences / sentences - sentence_ratio) < 0.015
    assert abs(switched / candidates - word_ratio) < 0.015


def test_code_switching_uses_translations(retrieval_task, tiny_world):
    task, _ = retrieval_task
    captions = _english_captions(task)
    dicts = find_dictionaries(tiny_world["data"])
    translations = {t for path in dicts.values() for _, t in read_dictionary(path)}
    english = {w for path in dicts.values() for w, _ in read_dictionary(path)}
    table = build_table(dicts, task.dictionary, os.path.join(tiny_world["data"], "sentencepiece.bpe.model"))
    ds = CodeSwitchDataset(captions, task.dictionary, table, 1.0, 1.0, seed=1)
    for i in range(20):
        words = task.dictionary.string(ds[i], "sentencepiece").split()
        assert words and all(w in translations or w not in english or w in ("left", "right", "of") for w in words), words
    off = CodeSwitchDataset(captions, task.dictionary, table, 0.0, 0.8, seed=1)
    assert all(torch.equal(off[i], captions[i]) for i in range(20))


def test_code_switch_option_reaches_the_tasks(tiny_world):
    """--code-switch switches English training captions (retrieval and pre-training), nothing else."""
    from m3p_fairseq.data.code_switch import CodeSwitchDataset as CS

    task, _ = setup(tiny_world["data"], "--task", "m3p_retrieval", "--caption-langs", "en,de", "--code-switch")
    task.load_dataset("train")
    parts = task.dataset("train").captions.datasets
    assert isinstance(parts[0], CS) and not isinstance(parts[1], CS)
    task.load_dataset("valid")  # the pairs of the validation loss, beside the recall's query batches
    assert not isinstance(task.dataset("valid").datasets[0].captions.datasets[0], CS)
    pre, _ = setup(tiny_world["data"], "--task", "multitask_multimodal", "--objectives", "mmlm,vlm", "--code-switch",
                   "--criterion", "m3p_pretrain")
    pre.load_dataset("train")
    assert isinstance(pre.dataset("train").datasets[1].captions, CS)


def test_ntg_code_switching_switches_body_and_title_together(tiny_world):
    """m3p_ntg --code-switch: an English training body's words are switched, and a title word taken from the body
    is switched the same way (the title copies the body in whatever language it has it); words only the title
    has (its "and") stay; dev items and runs without the flag are untouched."""
    plain, _ = setup(tiny_world["data"], "--task", "m3p_ntg", "--arch", "m3p_seq2seq_tiny", arch="m3p_seq2seq_tiny")
    cs, _ = setup(tiny_world["data"], "--task", "m3p_ntg", "--arch", "m3p_seq2seq_tiny", "--code-switch",
                  "--code-switch-sentence-ratio", "1", "--code-switch-word-ratio", "0.5", arch="m3p_seq2seq_tiny")
    for t in (plain, cs):
        t.load_dataset("train")
        t.load_dataset("valid")
    d = plain.dictionary
    words = lambda ids: d.string(ids, "sentencepiece").split()  # noqa: E731
    switched_bodies = switched_titles = 0
    for i in range(40):
        a, b = plain.dataset("train")[i], cs.dataset("train")[i]
        body, title, cs_body, cs_title = words(a["source"]), words(a["target"]), words(b["source"]), words(b["target"])
        assert len(cs_body) == len(body) and len(cs_title) == len(title)
        mapping = {w: v for w, v in zip(body, cs_body)}
        assert all(len({v for w2, v in zip(body, cs_body) if w2 == w}) == 1 for w in mapping)  # one choice a word
        for w, v in zip(title, cs_title):
            assert v == mapping.get(w, w)  # the body's choice, or unchanged when the body lacks the word
        switched_bodies += cs_body != body
        switched_titles += cs_title != title
    assert switched_bodies >= 35 and switched_titles > 20
    assert all(torch.equal(plain.dataset("valid")[i]["target"], cs.dataset("valid")[i]["target"]) for i in range(10))


def test_ntg_code_switching_into_one_language(tiny_world):
    """--code-switch-one-language: a switched item is in one language, its title's own "and" too, and is trained
    under that language's id."""
    from m3p_fairseq.data.code_switch import find_dictionaries, read_dictionary

    task, _ = setup(tiny_world["data"], "--task", "m3p_ntg", "--arch", "m3p_seq2seq_tiny", "--code-switch",
                    "--code-switch-one-language", "--code-switch-sentence-ratio", "1", "--code-switch-word-ratio", "1",
                    arch="m3p_seq2seq_tiny")
    task.load_dataset("train")
    words_of = {lang: {t for _, t in read_dictionary(p)} for lang, p in find_dictionaries(tiny_world["data"]).items()}
    d, langs = task.dictionary, set()
    for i in range(30):
        item = task.dataset("train")[i]
        lang = task.data_languages()[item["tgt_lang"]]
        assert item["src_lang"] == item["tgt_lang"] and lang != "en"
        title = d.string(item["target"], "sentencepiece").split()
        assert title and all(w in words_of[lang] for w in title), (lang, title)  # "and" included
        langs.add(lang)
    assert len(langs) > 3


def test_ntg_swap_copied_pairs(tiny_world):
    """--swap-copied-pairs P: in a share P of the pairs of adjacent words that an English title copies from its
    body, the two words trade places in the title and wherever the body has them (a phrase of the title stays a
    phrase of the body, the tokens stay the same); dev items are untouched, every epoch draws anew, a value out of
    [0, 1] is one line."""
    def ntg(*flags):
        t, _ = setup(tiny_world["data"], "--task", "m3p_ntg", "--arch", "m3p_seq2seq_tiny", *flags, arch="m3p_seq2seq_tiny")
        t.load_dataset("train")
        t.load_dataset("valid")
        return t
    plain, half, every = ntg(), ntg("--swap-copied-pairs", "0.5"), ntg("--swap-copied-pairs", "1")
    d = plain.dictionary
    words = lambda ids: d.string(ids, "sentencepiece").split()  # noqa: E731
    and_ = {"and"}
    for t, low, high in ((plain, 0.0, 0.0), (half, 0.35, 0.65), (every, 1.0, 1.0)):
        pairs = swapped = 0
        for i in range(80):
            a, b = plain.dataset("train")[i], t.dataset("train")[i]
            assert sorted(a["source"].tolist()) == sorted(b["source"].tolist()) and len(a["target"]) == len(b["target"])
            body, title, new_body, new_title = words(a["source"]), words(a["target"]), words(b["source"]), words(b["target"])
            for k in range(len(title) - 1):
                pair = title[k], title[k + 1]
                if not set(pair) & and_ and any(body[j:j + 2] == list(pair) for j in range(len(body) - 1)):
                    pairs += 1
                    swapped += new_title[k:k + 2] == [pair[1], pair[0]]
            for phrase in " ".join(new_title).split(" and "):  # still a span of the (new) body
                assert f" {phrase} " in f" {' '.join(new_body)} ", (new_title, new_body)
        assert pairs > 60 and low <= swapped / pairs <= high, (swapped, pairs)
    assert all(torch.equal(plain.dataset("valid")[i]["target"], every.dataset("valid")[i]["target"]) for i in range(10))
    first = [half.dataset("train")[i]["target"] for i in range(20)]
    half.dataset("train").set_epoch(2)
    assert any(not torch.equal(x, half.dataset("train")[i]["target"]) for i, x in enumerate(first))
    with pytest.raises(M3PInputError, match=r"^--swap-copied-pairs 1.5: a probability, in \[0, 1\]$"):
        ntg("--swap-copied-pairs", "1.5")


def test_xnli_code_switching_keeps_what_the_sentences_share(tiny_world):
    """m3p_xnli --code-switch: a word of the premise that the hypothesis repeats is switched the same way in both,
    so an entailed restatement stays identical and the label stays true."""
    plain, _ = setup(tiny_world["data"], "--task", "m3p_xnli")
    cs, _ = setup(tiny_world["data"], "--task", "m3p_xnli", "--code-switch")
    for t in (plain, cs):
        t.load_dataset("train")
    d, switched, same = plain.dictionary, 0, 0
    for i in range(60):
        a, b = plain.dataset("train")[i], cs.dataset("train")[i]
        assert a["target"] == b["target"]
        def sentences(tokens):  # <s> premise </s></s> hypothesis </s> -> [premise, hypothesis]
            out, current = [], []
            for t in tokens.tolist()[1:]:
                if t == d.eos():
                    out += [tuple(current)] if current else []
                    current = []
                else:
                    current.append(t)
            return out
        (p0, h0), (p1, h1) = (sentences(x["net_input.src_tokens"]) for x in (a, b))
        same += p0 == h0
        if p0 == h0:
            assert p1 == h1  # the restatement is switched as its premise is
        switched += p1 != p0
    assert switched > 30 and same > 10


def _tiny_model(task, cfg):
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    model.eval()
    return model


def test_two_stage_sharded_equals_unsharded(retrieval_task):
    task, cfg = retrieval_task
    model = _tiny_model(task, cfg)
    from m3p_fairseq.evaluation.retrieval import language_split

    captions, caption_image, images = language_split(task, "en", "test")
    pad, bos = task.dictionary.pad(), task.dictionary.bos()
    # one pair per batch: every pair sees the same padded shapes whichever shard scores it, so the
    # merged matrix must be bit-identical (larger batches differ by float rounding across batch shapes)
    dual, pairs, whole = two_stage_scores(model, captions, images, pad, bos, k=3, batch_size=1)
    assert len(pairs) < len(images) * len(captions)
    one = merge_two_stage(dual, pairs, [whole])
    parts = [two_stage_scores(model, captions, images, pad, bos, k=3, batch_size=1, num_shards=3, shard_id=s)[2]
             for s in range(3)]
    assert sum(len(p[0]) for p in parts) == len(pairs)
    np.testing.assert_array_equal(merge_two_stage(dual, pairs, parts), one)
    batched = [two_stage_scores(model, captions, images, pad, bos, k=3, batch_size=16, num_shards=2, shard_id=s)[2]
               for s in range(2)]
    np.testing.assert_allclose(merge_two_stage(dual, pairs, batched), one, atol=1e-5)
    assert recall_at_k(merge_two_stage(dual, pairs, batched), caption_image) == recall_at_k(one, caption_image)
    with pytest.raises(ValueError):
        merge_two_stage(dual, pairs, parts[:2])  # a missing shard is found, not silently ranked low
    # with k covering everything, two-stage is the full cross-encoder ranking
    dual_all, pairs_all, part_all = two_stage_scores(model, captions, images, pad, bos, k=len(captions))
    full = score_pairs(model, captions, images, pad)
    assert len(pairs_all) == len(images) * len(captions)
    assert recall_at_k(merge_two_stage(dual_all, pairs_all, [part_all]), caption_image) == \
        recall_at_k(full[1].reshape(len(images), len(captions)), caption_image)


def test_shortlist_and_combine():
    rng = np.random.default_rng(0)
    dual = rng.normal(size=(6, 9))
    pairs = shortlist(dual, 2)
    for i in range(6):
        assert set(np.argsort(-dual[i])[:2]) <= {c for im, c in pairs if im == i}
    for c in range(9):
        assert set(np.argsort(-dual[:, c])[:2]) <= {im for im, cc in pairs if cc == c}
    cross = rng.normal(size=(6, 9)) * 100
    scored = np.zeros((6, 9), dtype=bool)
    scored[pairs[:, 0], pairs[:, 1]] = True
    final = combine(dual, cross, scored)
    assert final[scored].min() > final[~scored].max()
    np.testing.assert_array_equal(np.argsort(final[~scored]), np.argsort(dual[~scored]))


def test_world_downstream_sets(tiny_world):
    data, world = tiny_world["data"], tiny_world["world"]
    for lang in ("en", "de", "ja", "ar"):
        for part in ("input0", "input1", "label"):
            assert os.path.exists(os.path.join(data, "xnli", lang, part, "test.bin"))
    assert os.path.exists(os.path.join(data, "xnli", "en", "label", "train.bin"))
    assert os.path.exists(os.path.join(data, "ntg", "en", "src", "train.bin"))
    assert os.path.exists(os.path.join(data, "ntg", "de", "tgt", "test.bin"))
    assert os.path.exists(os.path.join(data, "mild_corpus", "mild", "de", "context", "test.bin"))
    rows = open(os.path.join(world, "raw", "xnli", "XNLI-1.0", "xnli.test.tsv"), encoding="utf-8").read().splitlines()
    labels = [r.split("\t")[1] for r in rows[1:]]
    assert set(labels) == {"entailment", "neutral", "contradiction"}
    en = [r.split("\t") for r in rows[1:] if r.startswith("en\t")]
    leads = {(p.startswith("today "), h.startswith("today ")) for _, _, p, h in en}
    assert leads == {(False, False), (False, True), (True, False), (True, True)}  # drawn apart: not a clue
    bare = [p for _, _, p, _ in en if len(p.removeprefix("today ").split()) < 7]  # "a dog left of a red cat"
    assert 0 < len(bare) < len(en) and all(set(p.split()) & set(COLOURS) for p in bare)
    for _, label, premise, hypo in en:  # the hypothesis in the premise's order: what differs tells the label
        premise, hypo = (s.removeprefix("today ") for s in (premise, hypo))
        differ = [(a, b) for a, b in zip(premise.split(), hypo.split()) if a != b]
        if label == "entailment":
            assert premise == hypo
        elif label == "neutral":  # an object the premise does not mention
            assert set(hypo.split()) - set(premise.split())
        else:  # a colour or the relation changed, the objects kept
            assert differ and all(b not in OBJECTS for _, b in differ)
    titles = open(os.path.join(world, "raw", "ntg", "xglue.ntg.en.tgt.test"), encoding="utf-8").read().splitlines()
    bodies = open(os.path.join(world, "raw", "ntg", "xglue.ntg.en.src.test"), encoding="utf-8").read().splitlines()
    assert all(set(t.split()) - {"and"} <= set(b.split()) for t, b in zip(titles, bodies))


def test_world_noun_phrases_keep_their_language_order(tiny_world):
    """Every language says a colour and its object in one order, in its captions and in its text corpus
    (statements too: they once put the colour first in French and Spanish); every word of a language's XNLI and
    NTG sentences is a word of its text corpus ("today" once was not, in cs, ja, ru), and its dictionary lists
    only words its text has; an NTG title says the first sentence's two objects as the body does, some without
    their colour."""
    from preprocess.make_world import NO_SPACE, SENTENCE_END, TEXT_LANGS, words_of
    world = tiny_world["world"]
    lex = world_lexicon(world)
    read = lambda *path: open(os.path.join(world, "raw", *path), encoding="utf-8").read().splitlines()  # noqa: E731
    for lang in TEXT_LANGS:
        words = lambda lines: words_of(lex, lang, lines)  # noqa: E731
        text = words(read("text", f"{lang}.train.txt"))
        xnli = [r.split("\t") for r in read("xnli", "XNLI-1.0", "xnli.test.tsv")[1:] if r.startswith(lang + "\t")]
        said = words([p for _, _, p, _ in xnli] + [h for _, _, _, h in xnli])
        if lang in NTG_LANGS:
            said |= words(read("ntg", f"xglue.ntg.{lang}.src.test") + read("ntg", f"xglue.ntg.{lang}.tgt.test"))
        said -= {".", SENTENCE_END.get(lang)}  # NTG's sentence ends: no text sentence has one (an <unk> there)
        assert said and said <= text, (lang, said - text)
        if lang != "en":
            assert {line.split()[1] for line in read("dict", f"en-{lang}.txt")} <= text, lang
        if lang in NO_SPACE:
            continue
        colours, objects = {lex[lang][c] for c in COLOURS}, {lex[lang][o] for o in OBJECTS}
        captions = read("captions", f"train.{lang}.txt") if os.path.exists(
            os.path.join(world, "raw", "captions", f"train.{lang}.txt")) else []
        lines = [line.split() for line in read("text", f"{lang}.train.txt") + captions]
        pairs = [(a in colours, b in colours) for line in lines for a, b in zip(line, line[1:])
                 if {a, b} & colours and {a, b} & objects]
        assert len(pairs) > 100
        assert set(pairs) == {(False, True) if lang in COLOUR_AFTER else (True, False)}, lang
    for lang in NTG_LANGS:
        root = os.path.join(world, "raw", "ntg", f"xglue.ntg.{lang}")
        with open(f"{root}.src.test", encoding="utf-8") as f, open(f"{root}.tgt.test", encoding="utf-8") as g:
            items = [(body.split(" . ")[0].split(), title.split()) for body, title in zip(f, g)]
        sizes = set()
        for first, title in items:
            k = title.index(lex[lang]["and"])
            for phrase in (title[:k], title[k + 1:]):  # a span of the first sentence, in its order
                assert any(first[i:i + len(phrase)] == phrase for i in range(len(first))), (lang, title, first)
                sizes.add(len(phrase))
        assert sizes == {1, 2}, lang  # objects with and without their colour


# ---- bad input: one line each -------------------------------------------------------------------------

def _copy(tiny_world, tmp_path):
    data = str(tmp_path / "data")
    shutil.copytree(tiny_world["data"], data, symlinks=True)
    return data


def test_bad_input_xnli_label_outside_the_classes(tiny_world, tmp_path):
    data = _copy(tiny_world, tmp_path)
    label_dict = os.path.join(data, "xnli", "en", "label", "dict.txt")
    d = Dictionary.load(label_dict)
    with open(label_dict, "w") as f:  # the binarized ids of "neutral" now read "maybe"
        f.writelines(f"{'maybe' if s == 'neutral' else s} 1\n" for s in d.symbols[d.nspecial:])
    task, _ = setup(data, "--task", "m3p_xnli", "--criterion", "m3p_classification")
    with pytest.raises(M3PInputError) as e:
        task.load_dataset("train")
    msg = str(e.value)
    assert "xnli/en/label/train.bin: line" in msg and "label 'maybe' is not one of entailment, neutral, contradiction" in msg
    assert "\n" not in msg


def test_bad_input_mild_without_contexts(tiny_world, tmp_path):
    task, _ = setup(tiny_world["data"], "--task", "m3p_retrieval", "--context")
    with pytest.raises(M3PInputError) as e:
        task.load_dataset("train")
    assert "mild/en/context/train.bin: no MILD contexts for captions/en/train" in str(e.value)
    data = _copy({"data": os.path.join(tiny_world["data"], "mild_corpus")}, tmp_path)
    shutil.copy(os.path.join(data, "mild", "de", "context", "valid.bin"), os.path.join(data, "mild", "en", "context", "train.bin"))
    shutil.copy(os.path.join(data, "mild", "de", "context", "valid.idx"), os.path.join(data, "mild", "en", "context", "train.idx"))
    task, _ = setup(data, "--task", "m3p_retrieval", "--context")
    with pytest.raises(M3PInputError, match=r"mild/en/context/train.bin: 24 contexts for 240 query lines"):
        task.load_dataset("train")


def test_bad_input_tables_without_language(tmp_path):
    import json

    from m3p_fairseq.evaluation.tables import main, render

    good = {"retrieval": {"finetune_en": {"en": {"mR": 81.0}, "de": {"mR": 40.0}}, "chance_mR": 10.0,
                          "two_stage": {"en": {"mR": 80.0, "pairs": 900, "full_pairs": 2500, "dual_mR": 60.0}}},
            "xnli": {"en": {"acc": 70.0}}, "mmt": {"en-de": {"bleu4": 30.0}}, "mild": {"with_context": {"en": {"mR": 50}}}}
    text = render(good)
    assert "| finetune_en | 81.0 | 40.0 |" in text and "| en | 80.0 | 81.0 | 60.0 | 900 | 2500 |" in text
    for bad, needle in (({"xnli": {"acc": 70.0}}, "xnli.acc: expected a language"),
                        ({"retrieval": {"finetune_en": {"mR": 80.0}}}, "retrieval.finetune_en.mR: expected a language"),
                        ({"mmt": {"bleu4": 30.0}}, "mmt.bleu4: expected a direction")):
        path = str(tmp_path / "r.json")
        json.dump(bad, open(path, "w"))
        with pytest.raises(SystemExit) as e:
            main([path])
        assert needle in str(e.value) and path in str(e.value) and "\n" not in str(e.value)


def test_contrastive_loss():
    from m3p_fairseq.models.dual_encoder import contrastive_loss

    # rows of the same image are not each other's negatives
    text = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=-1)
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    loss_same, ncorrect = contrastive_loss(text, image, torch.tensor([7, 7, 9]), temperature=0.1)
    loss_diff, _ = contrastive_loss(text, image, torch.tensor([7, 8, 9]), temperature=0.1)
    assert loss_same < loss_diff and ncorrect == 3


def test_region_cache_flag_reaches_the_store_and_changes_no_batch(tiny_world):
    """--region-cache-mb keeps images in memory; the batches are the same as read from the shards."""
    plain, _ = setup(tiny_world["data"], "--task", "m3p_retrieval", "--criterion", "m3p_retrieval", "--seed", "3")
    cached, _ = setup(tiny_world["data"], "--task", "m3p_retrieval", "--criterion", "m3p_retrieval", "--seed", "3",
                      "--region-cache-mb", "16")
    assert plain.region_store("train").cache_bytes == 0 and cached.region_store("train").cache_bytes == 16 << 20
    for t in (plain, cached):
        t.load_dataset("train")
    a, b = plain.dataset("train"), cached.dataset("train")
    for _ in range(2):  # the second pass reads from the cache
        for i in range(min(len(a), 12)):
            x, y = a.collater([a[i]]), b.collater([b[i]])
            for k in ("regions", "region_boxes", "region_padding_mask", "src_tokens"):
                assert torch.equal(x["net_input"][k], y["net_input"][k]), k
    assert len(cached.region_store("train")._cache) > 0
