"""The embedded world: a deterministic synthetic image-text world in the formats of real data.

Images are sets of detector regions. Each object region's feature is its class prototype plus
its colour's vector plus noise (after a ReLU, like pooled CNN features); background regions and
"part" regions (a small box inside an object, with a weaker copy of its feature) act as
confusers, and the detector's top-1 class is wrong now and then. Captions name two objects of
the image with their colours and the spatial relation between them (left of / right of / above /
below), which only the boxes reveal; some images come as twins with the same objects in another
layout, so a bag of object names is not enough to match them.

Captions exist in six languages (en, de, fr, cs, ja, zh) from one lexicon; each language has
its own words and word order (ja and zh are written without spaces). Names, digits and a few
loanwords are shared across languages, as in real text. A text-only corpus in ten languages,
with unequal sizes, feeds xMLM. The bilingual word lists of the lexicon are written as MUSE-style
``en-xx.txt`` files for code-switching. A parallel corpus pairs English with each other language of
the text corpus (sentences of the text corpus's kinds, one meaning rendered in both languages),
with unequal sizes per pair, as OPUS and Europarl have them.

The downstream sets come in the raw formats of the public ones (XNLI-1.0 / XNLI-MT, XGLUE NTG,
MILD triples), so ``m3p-prepare-world`` binarizes them with the importers of real data; each has
its own random stream, so adding them left the pre-training data unchanged. MMT reads the captions:
the caption files of a split are parallel across languages, as Multi30K's are.

Output (OUT is the argument):

    OUT/raw/text/{lang}.{train,valid}.txt          text-only corpus, one sentence a line
    OUT/raw/captions/{split}.{lang}.txt            captions, one a line
    OUT/raw/captions/{split}.{lang}.ids            the image id of each caption line
    OUT/raw/dict/en-{xx}.txt                       bilingual word pairs "en_word xx_word"
    OUT/raw/parallel/en-{xx}/{train,valid}.{en,xx} translation pairs, line-aligned (Moses-style)
    OUT/raw/xnli/XNLI-1.0/xnli.{dev,test}.tsv      XNLI-style sentence pairs (every text language)
    OUT/raw/xnli/XNLI-MT-1.0/multinli/multinli.train.{lang}.tsv
    OUT/raw/ntg/xglue.ntg.{lang}.{src,tgt}.{train,dev,test}   news body -> title (train: en only)
    OUT/raw/mild/{lang}/{train,dev,test}.tsv       query<TAB>image_id<TAB>context on the world's images
    OUT/raw/iglue/...                              IGLUE-style sets in e-bug/iglue's layout (preprocess/iglue_world.py)
    OUT/regions/{split}.json + {split}.{k}.h5      the region store (manifest + shards)
    OUT/world.json                                 the generator's settings
"""
import argparse
import json
import os
import sys

import numpy as np

from m3p_fairseq.data.region_store import RegionShardWriter, write_manifest
from m3p_fairseq.errors import M3PInputError, command
from m3p_fairseq.outputs import check_writable

CAPTION_LANGS = ["en", "de", "fr", "cs", "ja", "zh"]
TEXT_LANGS = CAPTION_LANGS + ["es", "it", "ru", "ar"]
# relative sizes of the text-only corpus per language: unequal, so alpha sampling matters
TEXT_SHARE = {"en": 1.0, "de": 0.45, "fr": 0.4, "es": 0.3, "it": 0.2, "ru": 0.2, "cs": 0.1,
              "ja": 0.12, "zh": 0.12, "ar": 0.05}

OBJECTS = ["dog", "cat", "horse", "bird", "car", "bus", "bike", "boat", "tree", "house", "chair",
           "table", "cup", "ball", "kite", "lamp", "book", "phone", "shoe", "hat", "taxi", "pizza",
           "robot", "radio"]
LOANWORDS = {"taxi", "pizza", "robot", "radio"}  # same spelling in every Latin-script language
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "pink"]
RELATIONS = ["left_of", "right_of", "above", "below"]
EN_REL = {"left_of": "left of", "right_of": "right of", "above": "above", "below": "below"}
FUNCTION = ["a", "and", "has", "sees", "near", "the", "with", "today"]
NAMES = ["Anna", "Omar", "Lena", "Kenji", "Mei", "Pavel", "Sofia", "Luca"]
NUM_BACKGROUND = 8  # detector classes that are not objects (sky, wall, ...)

# Latin-script syllables per language; ja/zh/ru/ar use their own scripts
SYLLABLES = {
    "de": (["b", "d", "f", "g", "h", "k", "l", "m", "n", "r", "s", "t", "w", "z", "sch"], ["a", "e", "i", "o", "u", "ei", "au", "ü"]),
    "fr": (["b", "c", "d", "f", "l", "m", "n", "p", "r", "s", "t", "v", "ch"], ["a", "e", "i", "o", "ou", "é", "eau", "on"]),
    "cs": (["b", "d", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "č", "ř", "š"], ["a", "e", "i", "o", "u", "á", "ý"]),
    "es": (["b", "c", "d", "g", "l", "m", "n", "p", "r", "s", "t", "v"], ["a", "e", "i", "o", "u", "ue", "ia"]),
    "it": (["b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v"], ["a", "e", "i", "o", "u", "io"]),
}
SCRIPTS = {"ja": (0x30A2, 0x30F3), "zh": (0x4E00, 0x4FFF), "ru": (0x0430, 0x044F), "ar": (0x0627, 0x064A)}
NO_SPACE = {"ja", "zh"}
QUESTION_SHARE = 0.1  # of the caption languages' text sentences and translation pairs: questions (text_meaning)


def _make_word(rng, lang, used):
    for _ in range(1000):
        if lang in SYLLABLES:
            cons, vows = SYLLABLES[lang]
            w = "".join(cons[rng.integers(len(cons))] + vows[rng.integers(len(vows))]
                        for _ in range(rng.integers(2, 4)))
        else:
            lo, hi = SCRIPTS[lang]
            n = {"zh": rng.integers(1, 3), "ja": rng.integers(2, 4)}.get(lang, rng.integers(3, 7))
            w = "".join(chr(int(rng.integers(lo, hi + 1))) for _ in range(n))
        if w not in used:
            used.add(w)
            return w
    raise RuntimeError(f"could not make a new word for {lang}")


def build_lexicon(seed):
    """concept -> word, per language. English uses English words; others are generated."""
    concepts = OBJECTS + COLOURS + RELATIONS + FUNCTION
    lex = {"en": {c: EN_REL.get(c, c) for c in concepts}}
    for lang in TEXT_LANGS[1:]:
        rng = np.random.default_rng([seed, TEXT_LANGS.index(lang)])
        used, words = set(), {}
        for c in concepts:
            if c in LOANWORDS and lang in SYLLABLES:
                words[c] = c  # shared loanword
            elif c in RELATIONS:
                words[c] = _make_word(rng, lang, used) + ("" if lang in NO_SPACE else " " + _make_word(rng, lang, used)) \
                    if c in ("left_of", "right_of") else _make_word(rng, lang, used)
            else:
                words[c] = _make_word(rng, lang, used)
        lex[lang] = words
    return lex


def world_lexicon(world_dir):
    """The lexicon of the world written to ``world_dir`` (rebuilt from the seed in its world.json)."""
    path = os.path.join(world_dir, "world.json")
    try:
        with open(path, encoding="utf-8") as f:
            return build_lexicon(json.load(f)["seed"])
    except (OSError, ValueError, KeyError) as e:
        raise M3PInputError(f"{path}: cannot read the world's seed ({e.__class__.__name__}: {e}); run m3p-make-world")


def word_sep(lang):
    """What goes between two words of ``lang``: nothing in the languages written without spaces."""
    return "" if lang in NO_SPACE else " "


COLOUR_AFTER = ("fr", "es", "it", "ar")  # languages that put the colour after the object ("un chien rouge")


def noun_phrase(lex, lang, colour, obj):
    """[words] of a colour and an object in the order of ``lang`` (a colour None: the object alone). Every noun
    phrase of the world, in its captions, texts, statements, titles and questions, is said so."""
    w = lex[lang]
    if colour is None:
        return [w[obj]]
    return [w[obj], w[colour]] if lang in COLOUR_AFTER else [w[colour], w[obj]]


def render(lex, lang, c1, o1, rel, c2, o2):
    """One caption "a c1 o1 rel a c2 o2" in the word order of ``lang`` (a colour None: the object without one)."""
    w = lex[lang]
    np1, np2 = noun_phrase(lex, lang, c1, o1), noun_phrase(lex, lang, c2, o2)
    if lang in ("en", "de") or lang in COLOUR_AFTER:
        toks = [w["a"], *np1, w[rel], w["a"], *np2]
    elif lang in ("cs", "ru"):
        toks = [*np1, w[rel], *np2]
    elif lang == "ja":  # the reference object comes first, then the relation, then the subject
        toks = [*np2, w["the"], w[rel], w["with"], *np1]
    else:  # zh
        toks = [*np1, w["near"], *np2, w["the"], w[rel]]
    return word_sep(lang).join(toks)


def _scene(rng):
    c1, c2 = (str(c) for c in rng.choice(COLOURS, 2))
    o1, o2 = (str(o) for o in rng.choice(OBJECTS, 2, replace=False))
    return c1, o1, RELATIONS[rng.integers(4)], c2, o2


def text_meaning(rng, questions=False):
    """What a text-only sentence says, in no language: ("scene", (c1, o1, rel, c2, o2)), ("facts", two scenes)
    joined by "and" (every language's text then has its word for "and", as real text has: without it no
    language but English could write NTG's titles, "c1 o1 and c2 o2"), ("statement", (name, verb, digit,
    colour, object)), a statement with a shared name and digit, or, with ``questions`` (the caption languages,
    which have the question templates), ("question", (kind, slots)) for QUESTION_SHARE of them: a question of
    xGQA's kinds in the language's own order, as real text asks questions (without them no corpus shows where a
    language puts "what colour" or "how many", and no pre-training could carry a question over)."""
    r = rng.random()
    if r < 0.4:
        return "scene", _scene(rng)
    if r < 0.55:
        return "facts", (_scene(rng), _scene(rng))
    if questions and r >= 1 - QUESTION_SHARE:
        from .iglue_world import text_question  # (iglue_world builds on this module)
        return "question", text_question(rng, _scene(rng))
    name, digit = NAMES[rng.integers(len(NAMES))], str(rng.integers(2, 10))
    c, o = COLOURS[rng.integers(len(COLOURS))], OBJECTS[rng.integers(len(OBJECTS))]
    verb = "has" if rng.random() < 0.5 else "sees"
    return "statement", (name, verb, digit, c, o)


def say(lex, lang, meaning):
    """A meaning from ``text_meaning`` in the words and word order of ``lang``."""
    kind, concepts = meaning
    if kind == "facts":
        return render_facts(lex, lang, concepts)
    if kind == "question":
        from .iglue_world import ask
        return ask(lex, lang, *concepts)
    return (render if kind == "scene" else statement)(lex, lang, *concepts)


def render_facts(lex, lang, facts):
    """Several scenes as one sentence: "scene1 and scene2" in the words of ``lang``."""
    sep = word_sep(lang)
    return (sep + lex[lang]["and"] + sep).join(render(lex, lang, *f) for f in facts)


def word_splitter(lex, lang):
    """line -> [words] for a language written without spaces (None for the others): the longest word of the world's
    vocabulary in ``lang`` at each point (its lexicon, names, digits, the sentence end; a space ends a word and stays).
    The world's tokenizer trains on text split so (build_spm), its pieces staying inside words."""
    if lang not in NO_SPACE:
        return None
    vocab = set(lex[lang].values()) | set(NAMES) | set("0123456789") | {SENTENCE_END[lang]}
    lengths = sorted({len(w) for w in vocab}, reverse=True)

    def split(line):
        out = []
        for chunk in line.split():
            if chunk.isascii():  # a shared word set off by spaces (a name, a template word of the questions)
                out.append((" " if out else "") + chunk)
                continue
            i = 0
            while i < len(chunk):
                w = next((chunk[i:i + n] for n in lengths if chunk[i:i + n] in vocab), chunk[i])
                out.append((" " if i == 0 and out else "") + w)  # the space stays: a word after it starts a piece
                i += len(w)
        return out

    return split


def text_sentence(rng, lex, lang):
    return say(lex, lang, text_meaning(rng, questions=lang in CAPTION_LANGS))


def statement(lex, lang, name, verb, digit, c, o):
    """"Anna sees 3 red dog today" in the word order of ``lang``: its noun phrase as the language says one, and
    "today" in every language (the verb-last ones once left it out, and the XNLI and NTG sentences that begin with
    it met a word their pre-training text never had: six pieces of one or two letters in Russian)."""
    w = lex[lang]
    np_ = noun_phrase(lex, lang, c, o)
    if lang in ("ja", "cs", "ru"):  # verb last
        return word_sep(lang).join([name, w["today"], digit, *np_, w[verb]])
    return word_sep(lang).join([name, w[verb], digit, *np_, w["today"]])


class World:
    def __init__(self, seed=1, feat_dim=2048, noise=0.6):
        self.seed, self.feat_dim, self.noise = seed, feat_dim, noise
        rng = np.random.default_rng([seed, 1000])
        self.num_classes = len(OBJECTS) + NUM_BACKGROUND
        self.protos = rng.normal(0, 1, (self.num_classes, feat_dim)).astype(np.float32)
        self.colour_vecs = rng.normal(0, 0.8, (len(COLOURS), feat_dim)).astype(np.float32)
        self.lex = build_lexicon(seed)

    def _feature(self, rng, cls, colour=None, scale=1.0):
        z = scale * self.protos[cls] + rng.normal(0, self.noise, self.feat_dim)
        if colour is not None:
            z = z + scale * self.colour_vecs[colour]
        return np.maximum(z, 0.0).astype(np.float32)

    def _detect(self, rng, cls):
        return int(cls) if rng.random() < 0.85 else int(rng.integers(self.num_classes))

    def make_image(self, rng, objects=None):
        """Returns (regions dict, list of (object, colour, box)). Objects sit in cells of a 3x3 grid."""
        w, h = float(rng.integers(400, 801)), float(rng.integers(300, 601))
        n_obj = int(rng.integers(2, 4))
        if objects is None:
            objs = rng.choice(len(OBJECTS), n_obj, replace=False)
            objects = [(int(o), int(rng.integers(len(COLOURS)))) for o in objs]
        cells = rng.choice(9, len(objects), replace=False)
        feats, boxes, classes, placed = [], [], [], []
        for (o, c), cell in zip(objects, cells):
            gx, gy = cell % 3, cell // 3
            bw, bh = w / 3 * rng.uniform(0.5, 0.9), h / 3 * rng.uniform(0.5, 0.9)
            x1 = gx * w / 3 + rng.uniform(0, w / 3 - bw)
            y1 = gy * h / 3 + rng.uniform(0, h / 3 - bh)
            box = np.array([x1, y1, x1 + bw, y1 + bh], np.float32)
            feats.append(self._feature(rng, o, c))
            boxes.append(box)
            classes.append(self._detect(rng, o))
            placed.append((o, c, box))
            if rng.random() < 0.3:  # a part of the object: a confuser inside its box
                px, py = x1 + bw * rng.uniform(0, 0.5), y1 + bh * rng.uniform(0, 0.5)
                feats.append(self._feature(rng, o, c, scale=0.5))
                boxes.append(np.array([px, py, px + bw / 2, py + bh / 2], np.float32))
                classes.append(self._detect(rng, o))
        for _ in range(int(rng.integers(2, 5))):  # background regions
            b = int(rng.integers(NUM_BACKGROUND)) + len(OBJECTS)
            x1, y1 = rng.uniform(0, w * 0.5), rng.uniform(0, h * 0.5)
            boxes.append(np.array([x1, y1, x1 + rng.uniform(0.2, 0.5) * w, y1 + rng.uniform(0.2, 0.5) * h], np.float32))
            feats.append(self._feature(rng, b))
            classes.append(self._detect(rng, b))
        order = rng.permutation(len(feats))  # detectors do not list objects first
        regions = {"features": np.stack(feats)[order], "boxes": np.stack(boxes)[order],
                   "classes": np.array(classes)[order], "width": w, "height": h}
        return regions, placed

    @staticmethod
    def relation(box1, box2):
        dx = (box1[0] + box1[2] - box2[0] - box2[2]) / 2
        dy = (box1[1] + box1[3] - box2[1] - box2[3]) / 2
        if abs(dx) >= abs(dy):
            return "left_of" if dx < 0 else "right_of"
        return "above" if dy < 0 else "below"

    def caption(self, rng, placed, lang, pair=None):
        i, j = pair if pair is not None else rng.choice(len(placed), 2, replace=False)
        (o1, c1, b1), (o2, c2, b2) = placed[i], placed[j]
        rel = self.relation(b1, b2)
        return render(self.lex, lang, COLOURS[c1], OBJECTS[o1], rel, COLOURS[c2], OBJECTS[o2])


def write_split(world, out, split, n_images, caption_langs, captions_per_image, shards, seed, progress):
    rng = np.random.default_rng([seed, {"train": 1, "valid": 2, "test": 3}[split]])
    os.makedirs(os.path.join(out, "regions"), exist_ok=True)
    os.makedirs(os.path.join(out, "raw", "captions"), exist_ok=True)
    shard_paths = [os.path.join(out, "regions", f"{split}.{k}.h5") for k in range(shards)]
    writers = [RegionShardWriter(p, world.feat_dim, world.num_classes, max_regions=100) for p in shard_paths]
    caps = {lang: [] for lang in caption_langs}
    ids = {lang: [] for lang in caption_langs}
    scenes = []  # (image id, placed objects): what the downstream sets (MILD) describe
    prev = None
    for n in progress(range(n_images), desc=f"world {split}"):
        image_id = f"{split}_{n:06d}"
        if prev is not None and rng.random() < 0.2:
            twin = [(o, c) for o, c, _ in prev]  # same objects and colours, another layout
            regions, placed = world.make_image(rng, twin)
        else:
            regions, placed = world.make_image(rng)
        prev = placed
        scenes.append((image_id, placed))
        writers[n % shards].add(image_id, **regions)
        for k in range(captions_per_image):
            pair = rng.choice(len(placed), 2, replace=False)
            for lang in caption_langs:  # the same content in every language: a parallel test set
                caps[lang].append(world.caption(rng, placed, lang, pair))
                ids[lang].append(image_id)
    for w in writers:
        w.close()
    write_manifest(os.path.join(out, "regions", f"{split}.json"), shard_paths, world.feat_dim, world.num_classes)
    for lang in caption_langs:
        _write_lines(raw_captions(out, split, lang), caps[lang])
        _write_lines(raw_captions(out, split, lang, "ids"), ids[lang])
    return scenes


def raw_captions(world, split, lang, ext="txt"):
    """A world's raw caption file (``ext`` txt: one caption a line; ids: the image id of each line)."""
    return os.path.join(world, "raw", "captions", f"{split}.{lang}.{ext}")


def _write_lines(path, lines):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def write_text(world, out, n_sentences, seed):
    os.makedirs(os.path.join(out, "raw", "text"), exist_ok=True)
    for lang in TEXT_LANGS:
        rng = np.random.default_rng([seed, 77, TEXT_LANGS.index(lang)])
        n = max(20, int(n_sentences * TEXT_SHARE[lang]))
        lines = [text_sentence(rng, world.lex, lang) for _ in range(n)]
        n_valid = max(10, n // 20)
        _write_lines(os.path.join(out, "raw", "text", f"{lang}.train.txt"), lines[n_valid:])
        _write_lines(os.path.join(out, "raw", "text", f"{lang}.valid.txt"), lines[:n_valid])


def parallel_sizes(n_pairs):
    """en-xx pairs per language: ``n_pairs`` for the language with the most text, the others in the
    proportions of the text corpus (little text, little parallel text: OPUS's sizes are that uneven)."""
    top = max(TEXT_SHARE[lang] for lang in TEXT_LANGS[1:])
    return {lang: max(20, int(n_pairs * TEXT_SHARE[lang] / top)) for lang in TEXT_LANGS[1:]}


def write_parallel(world, out, n_pairs, seed):
    """Translation pairs, Moses-style: raw/parallel/en-{xx}/{train,valid}.{en,xx}, line-aligned. Each
    line pair is one meaning said in both languages, as a translator would (own words, own order)."""
    for lang, n in parallel_sizes(n_pairs).items():
        rng = np.random.default_rng([seed, 94, TEXT_LANGS.index(lang)])
        meanings = [text_meaning(rng, questions=lang in CAPTION_LANGS) for _ in range(n)]
        n_valid = max(10, n // 20)
        folder = os.path.join(out, "raw", "parallel", f"en-{lang}")
        os.makedirs(folder, exist_ok=True)
        for split, part in (("valid", meanings[:n_valid]), ("train", meanings[n_valid:])):
            for side in ("en", lang):
                _write_lines(os.path.join(folder, f"{split}.{side}"), [say(world.lex, side, m) for m in part])


def words_of(lex, lang, lines):
    """The set of words in ``lines`` of ``lang`` (split by word_splitter where no spaces are)."""
    split = word_splitter(lex, lang) or str.split
    return {word.strip() for line in lines for word in split(line.rstrip("\n"))}


def write_dictionaries(world, out):
    """MUSE-style en-xx word lists: the pairs whose words both languages' texts use (MUSE builds its lists from
    the two corpora, of single words; the lexicon also has words a language never says, Russian's "a", which
    code-switching would otherwise put into sentences as words their pre-training never saw). Call after
    write_text."""
    def text_words(lang):
        with open(os.path.join(out, "raw", "text", f"{lang}.train.txt"), encoding="utf-8") as f:
            return words_of(world.lex, lang, f)

    os.makedirs(os.path.join(out, "raw", "dict"), exist_ok=True)
    en, en_words = world.lex["en"], text_words("en")
    for lang in TEXT_LANGS[1:]:
        used = text_words(lang)  # words of a text are single words: a concept said in two never is one
        pairs = [f"{en[concept]} {word}" for concept, word in world.lex[lang].items()
                 if en[concept] in en_words and word in used]
        _write_lines(os.path.join(out, "raw", "dict", f"en-{lang}.txt"), pairs)


# ---- downstream sets: XNLI, NTG and MILD in their public formats --------------------------------------
# (MMT needs nothing more: the caption files of a split are parallel, line for line, like Multi30K's.)

XNLI_LABELS = ("entailment", "neutral", "contradiction")
NTG_LANGS = ["en", "de", "fr", "es", "ru"]  # XGLUE NTG's languages
MILD_LANGS = ["en", "de", "ja"]  # the training language, a Latin-script one, one without spaces
OPPOSITE = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}
SENTENCE_END = {"ja": "。", "zh": "。"}
XNLI_TODAY = 0.5  # of XNLI's premises and hypotheses, each on its own: "today" comes first
NTG_TODAY = 0.5  # of NTG's news items: "today" begins the body
NTG_BARE = 0.5  # of the objects a title names: said without a colour, in the body and the title alike
XNLI_BARE = 0.5  # of XNLI's pairs: an object the pair says alike goes without its colour ("a dog")


def nli_example(rng, label):
    """(premise, hypothesis) as concept tuples (c1, o1, rel, c2, o2) with the given XNLI label, the hypothesis in
    the premise's order.

    entailment: the fact said again;
    contradiction: the opposite relation, or a wrong colour on one of the two objects;
    neutral: one of the two objects replaced by one the premise does not mention (the relation drawn anew).
    So the label is what differs, if anything, and of which kind: an object word, or a colour or relation
    word. Two earlier designs were more than the 2-layer demo model could learn on English (measured, 1,000
    updates of 32): restating facts "the other way round" ("b below a" for "a above b") in entailment and
    contradiction alike made relation contradictions hinge on word order and relation together (16-28% of them
    right, 60-63% overall); a premise of two facts left it at 53% (60% after 3,000 updates). This one: 88%.
    """
    o1, o2, o3 = (OBJECTS[i] for i in rng.choice(len(OBJECTS), 3, replace=False))
    c1, c2, c3 = (COLOURS[i] for i in rng.integers(len(COLOURS), size=3))
    rel = RELATIONS[rng.integers(len(RELATIONS))]
    premise = (c1, o1, rel, c2, o2)
    if label == "entailment":
        hypo = premise
    elif label == "contradiction":
        if rng.random() < 0.5:
            hypo = (c1, o1, OPPOSITE[rel], c2, o2)
        else:
            side = int(rng.integers(2))  # the colour of the first or the second object is wrong
            colour = (c1, c2)[side]
            wrong = COLOURS[(COLOURS.index(colour) + 1 + int(rng.integers(len(COLOURS) - 1))) % len(COLOURS)]
            hypo = (wrong, o1, rel, c2, o2) if side == 0 else (c1, o1, rel, wrong, o2)
    elif label == "neutral":
        new_rel = RELATIONS[rng.integers(len(RELATIONS))]
        hypo = (c1, o1, new_rel, c3, o3) if rng.random() < 0.5 else (c3, o3, new_rel, c2, o2)
    else:
        raise ValueError(f"unknown XNLI label {label!r}")
    return premise, hypo


def begun_today(lex, lang, text, today=True):
    """``text`` with the word for "today" first (XNLI's sentences and NTG's bodies, half of them each)."""
    return lex[lang]["today"] + word_sep(lang) + text if today else text


def _nli_sentence(lex, lang, sentence):
    """A scene of an XNLI pair as write_xnli draws it: (scene, whether "today" leads)."""
    scene, today = sentence
    return begun_today(lex, lang, render(lex, lang, *scene), today)


def write_xnli(world, out, n_train, n_eval, seed, langs=TEXT_LANGS):
    """XNLI-1.0's xnli.{dev,test}.tsv (every language, parallel) and XNLI-MT-1.0's
    multinli.train.{lang}.tsv (the English training set machine-"translated": here rendered).

    Half the premises and, drawn apart, half the hypotheses begin with "today" (XNLI_TODAY), and in half the pairs
    an object the two say alike goes without its colour (XNLI_BARE), so neither a word's place nor its neighbour
    tells its kind. With every English sentence "a c1 o1 rel a c2 o2" a classifier fine-tuned on English read
    kinds off places: languages of that order carried over best, those without articles (cs, ru) or of another
    order (ja, zh) stayed near chance, and which of them did swung from run to run (measured from one checkpoint:
    transfer ratio 0.16-0.53); with the lead word 0.55-0.62, with both 0.68, every language 62-79
    (examples/m3p/README.downstream.md, "XNLI and NTG")."""
    root = os.path.join(out, "raw", "xnli")
    os.makedirs(os.path.join(root, "XNLI-1.0"), exist_ok=True)
    os.makedirs(os.path.join(root, "XNLI-MT-1.0", "multinli"), exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_eval), ("test", n_eval)):
        rng = np.random.default_rng([seed, 91, {"train": 1, "dev": 2, "test": 3}[split]])
        examples = []
        for _ in range(n):
            label = XNLI_LABELS[rng.integers(len(XNLI_LABELS))]
            p, h = nli_example(rng, label)
            same = [k for k in (0, 3) if p[k:k + 2] == h[k:k + 2]]  # objects said alike in both, colour and all
            if same and rng.random() < XNLI_BARE:  # one of them without its colour, in both
                k = same[rng.integers(len(same))]
                p, h = (x[:k] + (None,) + x[k + 1:] for x in (p, h))
            examples.append((label, (p, rng.random() < XNLI_TODAY), (h, rng.random() < XNLI_TODAY)))
        if split == "train":
            for lang in langs:
                rows = ["premise\thypo\tlabel"] + [
                    f"{_nli_sentence(world.lex, lang, p)}\t{_nli_sentence(world.lex, lang, h)}\t"
                    f"{'contradictory' if lab == 'contradiction' else lab}" for lab, p, h in examples]
                _write_lines(os.path.join(root, "XNLI-MT-1.0", "multinli", f"multinli.train.{lang}.tsv"), rows)
        else:
            rows = ["language\tgold_label\tsentence1\tsentence2"] + [
                f"{lang}\t{lab}\t{_nli_sentence(world.lex, lang, p)}\t{_nli_sentence(world.lex, lang, h)}"
                for lang in langs for lab, p, h in examples]
            _write_lines(os.path.join(root, "XNLI-1.0", f"xnli.{split}.tsv"), rows)


def news_example(rng):
    """The concepts of one news item: three objects, their colours, two relations, a statement, whether "today"
    leads, and which of the two objects the title names go without their colour."""
    o = [OBJECTS[i] for i in rng.choice(len(OBJECTS), 3, replace=False)]
    c = [COLOURS[i] for i in rng.integers(len(COLOURS), size=3)]
    rels = [RELATIONS[i] for i in rng.integers(len(RELATIONS), size=2)]
    who = (NAMES[rng.integers(len(NAMES))], "has" if rng.random() < 0.5 else "sees", str(rng.integers(2, 10)))
    bare = [rng.random() < NTG_BARE for _ in range(2)]
    return o, c, rels, who, rng.random() < NTG_TODAY, bare


def news_text(lex, lang, example):
    """(body, title): three sentences about a scene; the title names the first sentence's two objects as it says
    them. The first sentence begins with "today" in NTG_TODAY of the items, so where the title's words stand in the
    body varies, and each of its two objects goes without its colour in NTG_BARE of them, so a title's words are
    not always colour, object: with every English title "c1 o1 and c2 o2" the model wrote French and Spanish
    titles colour first, as no title of theirs is (BLEU-4 0.5; examples/m3p/README.downstream.md, "XNLI and NTG")."""
    o, c, rels, (name, verb, digit), today, bare = example
    w, end = lex[lang], SENTENCE_END.get(lang, " .")
    c0, c1 = (None if b else x for b, x in zip(bare, c[:2]))
    sentences = [begun_today(lex, lang, render(lex, lang, c0, o[0], rels[0], c1, o[1]), today),
                 statement(lex, lang, name, verb, digit, c[2], o[2]),
                 render(lex, lang, c[1], o[1], rels[1], c[2], o[2])]
    body = word_sep(lang).join(s + end for s in sentences)
    title = word_sep(lang).join(noun_phrase(lex, lang, c0, o[0]) + [w["and"]] + noun_phrase(lex, lang, c1, o[1]))
    return body, title


def write_ntg(world, out, n_train, n_eval, seed, langs=NTG_LANGS):
    """XGLUE NTG's files xglue.ntg.{lang}.{src,tgt}.{train,dev,test}: news body -> title.
    Training data in English only, as XGLUE; dev and test in every language."""
    root = os.path.join(out, "raw", "ntg")
    os.makedirs(root, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_eval), ("test", n_eval)):
        rng = np.random.default_rng([seed, 92, {"train": 1, "dev": 2, "test": 3}[split]])
        examples = [news_example(rng) for _ in range(n)]
        for lang in (["en"] if split == "train" else langs):
            pairs = [news_text(world.lex, lang, e) for e in examples]
            _write_lines(os.path.join(root, f"xglue.ntg.{lang}.src.{split}"), [b for b, _ in pairs])
            _write_lines(os.path.join(root, f"xglue.ntg.{lang}.tgt.{split}"), [t for _, t in pairs])


def write_mild(world, out, scenes, seed, langs=MILD_LANGS):
    """MILD-style <query, image, context> triples, ROOT/{lang}/{train,dev,test}.tsv with
    query<TAB>image_id<TAB>context: the query describes two objects of the image, the context
    (the text found around the image) two others, or the same two the other way round."""
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        rng = np.random.default_rng([seed, 93, {"train": 1, "valid": 2, "test": 3}[split]])
        rows = {lang: [] for lang in langs}
        for image_id, placed in scenes[split]:
            i, j = (int(x) for x in rng.choice(len(placed), 2, replace=False))
            others = [(a, b) for a in range(len(placed)) for b in range(len(placed))
                      if a != b and {a, b} != {i, j}] or [(j, i)]
            ctx = others[rng.integers(len(others))]
            for lang in langs:
                rows[lang].append(f"{world.caption(rng, placed, lang, (i, j))}\t{image_id}\t"
                                  f"{world.caption(rng, placed, lang, ctx)}")
        for lang in langs:
            os.makedirs(os.path.join(out, "raw", "mild", lang), exist_ok=True)
            _write_lines(os.path.join(out, "raw", "mild", lang, f"{name}.tsv"), rows[lang])


@command("m3p-make-world")
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--feat-dim", type=int, default=2048, help="region feature size (2048 like Faster R-CNN)")
    p.add_argument("--train-images", type=int, default=3000)
    p.add_argument("--valid-images", type=int, default=100)
    p.add_argument("--test-images", type=int, default=100)
    p.add_argument("--train-captions", type=int, default=2,
                   help="captions per training image (in every language; pre-training reads English only)")
    p.add_argument("--text-sentences", type=int, default=20000, help="sentences of the largest language")
    p.add_argument("--parallel-pairs", type=int, default=None,
                   help="en-xx translation pairs of the largest pair, en-de; the others fewer, in the "
                        "proportions of the text corpus (default: 15%% of --text-sentences)")
    p.add_argument("--train-shards", type=int, default=2)
    p.add_argument("--xnli-train", type=int, default=None, help="XNLI training pairs (default: --train-images)")
    p.add_argument("--xnli-eval", type=int, default=None, help="XNLI dev and test pairs per language (default: 3 x --test-images)")
    p.add_argument("--ntg-train", type=int, default=None, help="NTG training items, English (default: --train-images)")
    p.add_argument("--ntg-eval", type=int, default=None, help="NTG dev and test items per language (default: --test-images)")
    p.add_argument("--iglue-train", type=int, default=None,
                   help="English training examples of each IGLUE-style task (default: 3 x --train-images)")
    p.add_argument("--iglue-test", type=int, default=None,
                   help="IGLUE-style test examples per task and language (default: 3 x --test-images)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.train_images < 1 or a.test_images < 2 or a.feat_dim < 8:
        p.error("need at least 1 training image, 2 test images and an 8-d feature")
    check_writable(a.out, folder=True)
    progress = (lambda x, desc: x) if a.quiet else _tqdm
    world = World(a.seed, a.feat_dim)
    scenes = {
        "train": write_split(world, a.out, "train", a.train_images, CAPTION_LANGS, a.train_captions, a.train_shards,
                             a.seed, progress),
        "valid": write_split(world, a.out, "valid", a.valid_images, CAPTION_LANGS, 1, 1, a.seed, progress),
        "test": write_split(world, a.out, "test", a.test_images, CAPTION_LANGS, 1, 1, a.seed, progress),
    }
    write_text(world, a.out, a.text_sentences, a.seed)
    write_dictionaries(world, a.out)
    # downstream sets, each from its own random stream: the pre-training data above stays as it was
    write_xnli(world, a.out, a.xnli_train or a.train_images, a.xnli_eval or 3 * a.test_images, a.seed)
    write_ntg(world, a.out, a.ntg_train or a.train_images, a.ntg_eval or a.test_images, a.seed)
    write_mild(world, a.out, scenes, a.seed)
    a.parallel_pairs = a.text_sentences * 3 // 20 if a.parallel_pairs is None else a.parallel_pairs
    write_parallel(world, a.out, a.parallel_pairs, a.seed)  # its own random stream too
    from .iglue_world import write_iglue  # it builds on this module

    write_iglue(world, a.out, scenes, a.seed, a.iglue_train or 3 * a.train_images, a.iglue_test or 3 * a.test_images)
    with open(os.path.join(a.out, "world.json"), "w") as f:
        json.dump({**vars(a), "num_classes": world.num_classes, "caption_langs": CAPTION_LANGS,
                   "text_langs": TEXT_LANGS}, f, indent=1)
    print(f"world written to {a.out}", file=sys.stderr)


def _tqdm(x, desc):
    from tqdm import tqdm

    return tqdm(x, desc=desc, file=sys.stderr, mininterval=1.0)


if __name__ == "__main__":
    main()
