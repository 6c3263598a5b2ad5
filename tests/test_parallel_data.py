"""Parallel text: the embedded world's translation pairs, and the readers of real corpora (Moses-style
line-aligned files, OPUS TMX, TSV) into fairseq's language-pair layout.

Pairs are read back the way a fairseq user's training reads them (``load_langpair_dataset`` of the
translation task, a ``LanguagePairDataset``), then decoded by sentencepiece, so a pair that comes
out equal went through raw -> pieces -> ids -> .bin/.idx on both sides.
"""
import filecmp
import gzip
import os

import pytest
import sentencepiece as spm
from fairseq.data import Dictionary, LanguagePairDataset, data_utils
from fairseq.tasks.translation import load_langpair_dataset

from preprocess import build_spm
from preprocess.datasets import main
from preprocess.make_world import (CAPTION_LANGS, COLOURS, EN_REL, NAMES, OBJECTS, TEXT_LANGS, World, parallel_sizes,
                                   raw_captions, say, word_splitter, world_lexicon, write_parallel)

EN = ["the cat sleeps on the sofa", "I like green tea", "where is the station", "thank you very much"]
DE = ["die Katze schläft auf dem Sofa", "ich mag grünen Tee", "wo ist der Bahnhof", "vielen Dank"]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    base = tmp_path_factory.mktemp("vocab")
    (base / "raw.txt").write_text("\n".join((EN + DE) * 3) + "\n", encoding="utf-8")
    build_spm.train([str(base / "raw.txt")], str(base), vocab_size=100)
    return ["--spm", str(base / "sentencepiece.bpe.model"), "--dict", str(base / "dict.txt")]


def read_pairs(data, src, tgt, split):
    """[(source, target)] of DATA/parallel/{src}-{tgt}/{split}, loaded as fairseq-train --task translation does."""
    folder = os.path.join(data, "parallel", f"{src}-{tgt}")
    d = Dictionary.load(os.path.join(folder, f"dict.{src}.txt"))
    assert filecmp.cmp(os.path.join(folder, f"dict.{tgt}.txt"), os.path.join(data, "dict.txt"), shallow=False)
    ds = load_langpair_dataset(folder, split, src, d, tgt, d, combine=False, dataset_impl="mmap",
                               upsample_primary=1, left_pad_source=True, left_pad_target=False,
                               max_source_positions=1024, max_target_positions=1024)
    assert isinstance(ds, LanguagePairDataset)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(data, "sentencepiece.bpe.model"))
    decode = lambda ids: sp.decode(d.string(ids).split())  # noqa: E731
    return [(decode(ds[i]["source"]), decode(ds[i]["target"])) for i in range(len(ds))]


def _write(path, text, gz=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with (gzip.open(path, "wt", encoding="utf-8") if gz else open(path, "w", encoding="utf-8")) as f:
        f.write(text)


def _fails(argv, vocab):
    with pytest.raises(SystemExit) as e:
        main(argv + vocab)
    message = str(e.value)
    assert "\n" not in message
    return message


# ---- the embedded world -----------------------------------------------------------------------------

def english_meaning(sentence):
    """What an English sentence of the world says, read from its words alone."""
    toks = sentence.split()
    if toks[0] in ("what", "is", "how"):  # a question of xGQA's kinds
        return "question", english_question(toks)
    if toks[0] in NAMES:  # "Anna sees 3 red dog today"
        name, verb, digit, colour, obj, today = toks
        assert today == "today" and verb in ("has", "sees") and digit.isdigit()
        return "statement", (name, verb, digit, colour, obj)
    if "and" in toks:  # two facts: "a red dog left of a blue cat and a green bird above a pink tree"
        cut = toks.index("and")
        first, second = (english_meaning(" ".join(part)) for part in (toks[:cut], toks[cut + 1:]))
        assert first[0] == second[0] == "scene"
        return "facts", (first[1], second[1])
    # "a red dog left of a blue cat"
    a1, c1, o1, *rel, a2, c2, o2 = toks
    assert a1 == a2 == "a" and {c1, c2} <= set(COLOURS) and {o1, o2} <= set(OBJECTS)
    relation = {v: k for k, v in EN_REL.items()}[" ".join(rel)]
    return "scene", (c1, o1, relation, c2, o2)


def english_question(toks):
    """(kind, slots) of an English question of the world's text, read from its words alone."""
    relation = {v: k for k, v in EN_REL.items()}
    if toks == "how many objects are there".split():
        return "q_count", {}
    if toks[:3] == ["what", "colour", "is"]:
        assert toks[3] == "the" and len(toks) == 5
        return "q_colour", {"o": toks[4]}
    if toks[:2] == ["is", "there"]:
        assert toks[2] == "a" and len(toks) == 5
        return "q_exist", {"np": tuple(toks[3:])}
    if toks[:2] == ["what", "is"]:  # what is left of the red dog
        assert toks[-3] == "the"
        return "q_object", {"rel": relation[" ".join(toks[2:-3])], "np": tuple(toks[-2:])}
    assert toks[:2] == ["is", "the"] and toks[-3] == "the", toks  # is the red dog left of the blue cup
    return "q_relation", {"np1": tuple(toks[2:4]), "rel": relation[" ".join(toks[4:-3])], "np2": tuple(toks[-2:])}


def _concepts(kind, concepts):
    """The concepts a meaning names, flat (a question's slots: objects, colours, relations)."""
    if kind == "facts":
        return [c for fact in concepts for c in fact]
    if kind == "question":
        return [c for value in concepts[1].values() for c in ((value,) if isinstance(value, str) else value)]
    return list(concepts)


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def test_world_pairs_are_translations(tiny_world):
    """Every line pair of every en-xx corpus says one meaning: the English side, read word by word,
    said again in xx through the world's lexicon is the xx side; and the xx side holds the lexicon's
    xx word for every concept of the English side (and a statement's shared name and digit). The caption
    languages' pairs hold questions too, the others none."""
    lex = world_lexicon(tiny_world["world"])
    root = os.path.join(tiny_world["world"], "raw", "parallel")
    assert sorted(os.listdir(root)) == sorted(f"en-{lang}" for lang in TEXT_LANGS[1:])
    for lang in TEXT_LANGS[1:]:
        for split in ("train", "valid"):
            en = _lines(os.path.join(root, f"en-{lang}", f"{split}.en"))
            xx = _lines(os.path.join(root, f"en-{lang}", f"{split}.{lang}"))
            assert len(en) == len(xx) > 0
            kinds = set()
            for e, x in zip(en, xx):
                kind, concepts = english_meaning(e)
                kinds.add(kind)
                assert say(lex, lang, (kind, concepts)) == x, (lang, e, x)
                words = [lex[lang][c] if c in lex[lang] else c for c in _concepts(kind, concepts)]  # names, digits: shared
                assert all(w in x for w in words), (lang, e, x)
            if split == "train":
                assert ("question" in kinds) == (lang in CAPTION_LANGS), (lang, kinds)


def _boundaries(parts):
    """Offsets in the text without spaces where the parts (words or pieces) end."""
    ends, n = set(), 0
    for p in parts:
        n += len(p.replace("\u2581", "").replace(" ", ""))
        ends.add(n)
    return ends


def test_world_tokenizer_pieces_stay_inside_words(tiny_world):
    """Japanese and Chinese are written without spaces; the world's tokenizer trains on their text split at the
    world's words, so no piece of a caption or a text sentence spans two words (a tokenizer trained on the raw text
    learned the templates' collocations as pieces: in the demo's, 1,530 of 2,000 pieces katakana or CJK runs across
    words, no Japanese colour or object word whole). Frequent Latin words are single pieces (unigram split "pink")."""
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tiny_world["data"], "sentencepiece.bpe.model"))
    lex = world_lexicon(tiny_world["world"])
    for lang in ("ja", "zh"):
        split = word_splitter(lex, lang)
        lines = _lines(raw_captions(tiny_world["world"], "test", lang))
        lines += _lines(os.path.join(tiny_world["world"], "raw", "text", f"{lang}.valid.txt"))
        assert len(lines) > 30
        for line in lines:
            words = split(line)
            assert "".join(words) == line and any(w in lex[lang].values() for w in words)
            assert _boundaries(words) <= _boundaries(sp.encode(line, out_type=str)), (lang, line)
    assert word_splitter(lex, "de") is None
    for word in ("red", "pink", "radio"):  # (this world's 400 pieces hold its 234 characters and 166 merges)
        assert sp.encode(word, out_type=str) == ["\u2581" + word]


def test_world_sizes_unequal_and_deterministic(tmp_path):
    world = World(seed=5, feat_dim=8)
    write_parallel(world, str(tmp_path / "a"), 400, seed=5)
    write_parallel(world, str(tmp_path / "b"), 400, seed=5)
    write_parallel(World(seed=6, feat_dim=8), str(tmp_path / "c"), 400, seed=6)
    sizes = {}
    for lang in TEXT_LANGS[1:]:
        folder = f"raw/parallel/en-{lang}"
        sizes[lang] = sum(len(_lines(str(tmp_path / "a" / folder / f"{s}.{lang}"))) for s in ("train", "valid"))
        for name in (f"train.en", f"train.{lang}", "valid.en", f"valid.{lang}"):
            assert filecmp.cmp(tmp_path / "a" / folder / name, tmp_path / "b" / folder / name, shallow=False)
        assert not filecmp.cmp(tmp_path / "a" / folder / "train.en", tmp_path / "c" / folder / "train.en", shallow=False)
    assert sizes == parallel_sizes(400)
    assert sizes["de"] == 400 and sizes["ar"] < sizes["cs"] < sizes["fr"] < sizes["de"]
    assert len(set(sizes.values())) >= 5


def test_world_pairs_binarized_as_language_pairs(tiny_world):
    """m3p-prepare-world put every pair where fairseq's translation task finds it, line for line."""
    root = os.path.join(tiny_world["world"], "raw", "parallel")
    for lang in TEXT_LANGS[1:]:
        for split in ("train", "valid"):
            raw = list(zip(_lines(os.path.join(root, f"en-{lang}", f"{split}.en")),
                           _lines(os.path.join(root, f"en-{lang}", f"{split}.{lang}"))))
            assert read_pairs(tiny_world["data"], "en", lang, split) == raw


# ---- readers of real corpora ------------------------------------------------------------------------

def test_moses_pair_and_valid_lines(tmp_path, vocab):
    _write(str(tmp_path / "europarl-v7.de-en.en"), "\n".join(EN) + "\n")
    _write(str(tmp_path / "europarl-v7.de-en.de.gz"), "\n".join(DE) + "\n", gz=True)
    data = str(tmp_path / "data")
    main(["moses", "--train", str(tmp_path / "europarl-v7.de-en"), "--pair", "en-de", "--valid-lines", "1",
          "--out", data] + vocab)
    assert read_pairs(data, "en", "de", "train") == list(zip(EN[:3], DE[:3]))
    assert read_pairs(data, "en", "de", "valid") == [(EN[3], DE[3])]
    # the other direction is its own folder, beside the first
    main(["moses", "--test", str(tmp_path / "europarl-v7.de-en"), "--pair", "de-en", "--out", data] + vocab)
    assert read_pairs(data, "de", "en", "test") == list(zip(DE, EN))
    assert read_pairs(data, "en", "de", "valid") == [(EN[3], DE[3])]


def test_tmx_units_with_regional_codes_and_inline_markup(tmp_path, vocab):
    tmx = f"""<?xml version="1.0" encoding="utf-8"?>
<tmx version="1.4">
<header creationtool="Uplug" srclang="en" adminlang="en" segtype="sentence" o-tmf="unknown" datatype="PlainText"/>
<body>
<tu>
  <tuv xml:lang="en-GB"><seg>{EN[0]}</seg></tuv>
  <tuv xml:lang="DE"><seg>{DE[0]}</seg></tuv>
</tu>
<tu><prop type="score">0.9</prop>
  <tuv xml:lang="fr"><seg>merci</seg></tuv>
  <tuv xml:lang="de_AT"><seg>ich <ph x="1">&lt;b&gt;</ph>mag <hi>grünen</hi> Tee</seg></tuv>
  <tuv xml:lang="en"><seg>I like <bpt i="1">&lt;i&gt;</bpt>green<ept i="1">&lt;/i&gt;</ept> tea</seg></tuv>
</tu>
</body>
</tmx>
"""
    _write(str(tmp_path / "en-de.tmx.gz"), tmx, gz=True)
    data = str(tmp_path / "data")
    main(["tmx", "--train", str(tmp_path / "en-de.tmx.gz"), "--pair", "en-de", "--out", data] + vocab)
    assert read_pairs(data, "en", "de", "train") == [(EN[0], DE[0]), (EN[1], DE[1])]

    _write(str(tmp_path / "missing.tmx"), tmx.replace('<tuv xml:lang="de_AT">', '<tuv xml:lang="it">'))
    message = _fails(["tmx", "--train", str(tmp_path / "missing.tmx"), "--pair", "en-de", "--out",
                      str(tmp_path / "d2")], vocab)
    assert "missing.tmx: line 9 (tu 2): no <tuv> for de (found fr, it, en)" in message
    _write(str(tmp_path / "empty.tmx"), tmx.replace(f"<seg>{DE[0]}</seg>", "<seg> </seg>"))
    message = _fails(["tmx", "--train", str(tmp_path / "empty.tmx"), "--pair", "en-de", "--out",
                      str(tmp_path / "d2")], vocab)
    assert message.endswith("empty.tmx: line 5 (tu 1, de): empty text")
    _write(str(tmp_path / "broken.tmx"), tmx.replace("</seg></tuv>\n</tu>", "</tuv>\n</tu>", 1))
    message = _fails(["tmx", "--train", str(tmp_path / "broken.tmx"), "--pair", "en-de", "--out",
                      str(tmp_path / "d2")], vocab)
    assert "broken.tmx: line 7, column" in message and "not well-formed XML (mismatched tag)" in message
    _write(str(tmp_path / "other.xml"), "<html><body/></html>\n")
    message = _fails(["tmx", "--train", str(tmp_path / "other.xml"), "--pair", "en-de", "--out",
                      str(tmp_path / "d2")], vocab)
    assert "other.xml: line 1: root element <html>, not <tmx>" in message
    assert not os.path.exists(tmp_path / "d2" / "parallel")


def test_tsv_pairs_and_columns(tmp_path, vocab):
    _write(str(tmp_path / "pairs.tsv"), "".join(f"{e}\t{d}\n" for e, d in zip(EN, DE)))
    _write(str(tmp_path / "WikiMatrix.de-en.tsv"), "".join(f"1.0{k}\t{d}\t{e}\n" for k, (e, d) in enumerate(zip(EN, DE))))
    data = str(tmp_path / "data")
    main(["tsv", "--train", str(tmp_path / "pairs.tsv"), "--pair", "en-de", "--out", data] + vocab)
    assert read_pairs(data, "en", "de", "train") == list(zip(EN, DE))
    main(["tsv", "--valid", str(tmp_path / "WikiMatrix.de-en.tsv"), "--columns", "3,2", "--pair", "en-de",
          "--out", data] + vocab)
    assert read_pairs(data, "en", "de", "valid") == list(zip(EN, DE))
    # the same --columns read the plain file too: fields 3,2 need 3 fields
    message = _fails(["tsv", "--train", str(tmp_path / "pairs.tsv"), "--columns", "3,2", "--pair", "en-de",
                      "--out", str(tmp_path / "d2")], vocab)
    assert "pairs.tsv: line 1: 2 fields, --columns 3,2 needs 3" in message

    _write(str(tmp_path / "tab.tsv"), f"{EN[0]}\t{DE[0]}\n{EN[1]}\t{DE[1]}\tstray\n")
    message = _fails(["tsv", "--train", str(tmp_path / "tab.tsv"), "--pair", "en-de", "--out", str(tmp_path / "d2")], vocab)
    assert "tab.tsv: line 2: 3 fields, line 1 has 2" in message
    _write(str(tmp_path / "empty.tsv"), f"{EN[0]}\t{DE[0]}\n{EN[1]}\t \n")
    message = _fails(["tsv", "--train", str(tmp_path / "empty.tsv"), "--pair", "en-de", "--out", str(tmp_path / "d2")], vocab)
    assert message.endswith("empty.tsv: line 2 (de): empty text")
    assert not os.path.exists(tmp_path / "d2" / "parallel")


def test_moses_bad_input_names_the_file_and_line(tmp_path, vocab):
    _write(str(tmp_path / "corpus.en"), "\n".join(EN) + "\n")
    _write(str(tmp_path / "corpus.de"), "\n".join(DE[:3]) + "\n")
    args = ["moses", "--train", str(tmp_path / "corpus"), "--pair", "en-de", "--out", str(tmp_path / "data")]
    assert f"corpus.de: 3 lines, {tmp_path}/corpus.en has 4 (line-aligned files need as many)" in _fails(args, vocab)
    _write(str(tmp_path / "corpus.de"), "\n".join([DE[0], "", DE[2], DE[3]]) + "\n")
    assert _fails(args, vocab).endswith("corpus.de: line 2: empty text")
    # a carriage return inside a sentence does not split its line (Moses files are \n-separated)
    _write(str(tmp_path / "corpus.de"), "\n".join([DE[0], "ich mag\rgrünen Tee", DE[2], DE[3]]) + "\n")
    assert "--valid-lines 4" in _fails(args + ["--valid-lines", "4"], vocab)
    assert not os.path.exists(tmp_path / "data" / "parallel")
    main(args + vocab)
    assert read_pairs(str(tmp_path / "data"), "en", "de", "train")[1] == (EN[1], DE[1])

    assert "--pair 'en_de': expected two different language codes" in _fails(
        ["moses", "--train", str(tmp_path / "corpus"), "--pair", "en_de", "--out", str(tmp_path / "d2")], vocab)
    assert "corpus.fr: no such file" in _fails(
        ["moses", "--train", str(tmp_path / "corpus"), "--pair", "en-fr", "--out", str(tmp_path / "d2")], vocab)
    assert "give --train, --valid or --test" in _fails(["moses", "--pair", "en-de", "--out", str(tmp_path / "d2")], vocab)
    assert "--valid-lines 2: needs a training set" in _fails(
        ["moses", "--valid", str(tmp_path / "corpus"), "--valid-lines", "2", "--pair", "en-de", "--out",
         str(tmp_path / "d2")], vocab)


def test_byte_order_mark_dropped_and_bytes_not_utf8_named(tmp_path, vocab):
    # files saved by Windows tools: a UTF-8 byte-order mark and CRLF line ends read as the plain file
    (tmp_path / "win.en").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(EN).encode("utf-8") + b"\r\n")
    with gzip.open(tmp_path / "win.de.gz", "wb") as f:
        f.write(b"\xef\xbb\xbf" + "\r\n".join(DE).encode("utf-8") + b"\r\n")
    data = str(tmp_path / "data")
    main(["moses", "--train", str(tmp_path / "win"), "--pair", "en-de", "--out", data] + vocab)
    assert read_pairs(data, "en", "de", "train") == list(zip(EN, DE))
    # a Latin-1 byte deep in a long file: the line it is on, however far the decoder read ahead
    lines = [EN[i % len(EN)] for i in range(2000)]
    body = "\n".join(lines).encode("utf-8").split(b"\n")
    body[1500] = body[1500] + b" caf\xe9"
    (tmp_path / "big.en").write_bytes(b"\n".join(body) + b"\n")
    _write(str(tmp_path / "big.de"), "\n".join(DE[i % len(DE)] for i in range(2000)) + "\n")
    message = _fails(["moses", "--train", str(tmp_path / "big"), "--pair", "en-de", "--out", str(tmp_path / "d2")],
                     vocab)
    assert message.endswith(f"{tmp_path}/big.en: line 1501: not UTF-8 (byte {len(body[1500])} of the line is "
                            "b'\\xe9'); convert the file with iconv -t UTF-8"), message
    assert not os.path.exists(tmp_path / "d2")
    # the same for a tab-separated file
    (tmp_path / "pairs.tsv").write_bytes(b"a\tb\nc\xff\td\n")
    assert _fails(["tsv", "--train", str(tmp_path / "pairs.tsv"), "--pair", "en-de", "--out", str(tmp_path / "d3")],
                  vocab).endswith("pairs.tsv: line 2: not UTF-8 (byte 2 of the line is b'\\xff'); convert the file "
                                  "with iconv -t UTF-8")


def test_binarize_pair_checks_alignment_and_writes_nothing_on_failure(tmp_path, vocab):
    from preprocess.binarize import BinarizeError, binarize_pair

    spm_model, dict_path = vocab[1], vocab[3]
    _write(str(tmp_path / "train.en"), "\n".join(EN) + "\n")
    _write(str(tmp_path / "train.de"), "\n".join(DE[:3]) + "\n")
    out = str(tmp_path / "out")
    splits = {"train": (str(tmp_path / "train.en"), str(tmp_path / "train.de"))}
    with pytest.raises(BinarizeError, match=r"train.de: 3 lines for the 4 lines of .*train.en"):
        binarize_pair(spm_model, dict_path, out, "en", "de", splits)
    _write(str(tmp_path / "train.de"), "\n".join([DE[0], DE[1], "  ", DE[3]]) + "\n")
    with pytest.raises(BinarizeError, match=r"train.de: line 3 is empty"):
        binarize_pair(spm_model, dict_path, out, "en", "de", splits)
    assert not os.path.exists(out) and not [p for p in os.listdir(tmp_path) if p.startswith(".binarize")]
    _write(str(tmp_path / "train.de"), "\n".join(DE) + "\n")
    binarize_pair(spm_model, dict_path, out, "en", "de", splits)
    assert sorted(os.listdir(out)) == ["dict.de.txt", "dict.en.txt", "train.en-de.de.bin", "train.en-de.de.idx",
                                       "train.en-de.en.bin", "train.en-de.en.idx"]
    d = Dictionary.load(dict_path)
    tgt = data_utils.load_indexed_dataset(os.path.join(out, "train.en-de.de"), d)
    assert len(tgt) == 4
