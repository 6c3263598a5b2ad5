"""IGLUE-style sets over the embedded world's scenes, written as e-bug/iglue distributes its data.

Every set is English for training and the world's caption languages for test, each language in its
own words and word order (the world's lexicon; the few question and statement words the lexicon lacks
are shared by every language, as its names and digits are; the questions are in the world's text too,
make_world.text_meaning), so a model trained on English must transfer. What a sentence says is decided on the scene:

* xGQA: questions about a colour ("what colour is the dog"), the object in a relation ("what is left of
  the red cup"), a relation or an object's presence (yes / no) and the object count (2 / 3). The
  answers are spread so that the most frequent one is right for about one question in eight, and no
  answer follows from the question alone.
* XVNLI: hypotheses the scene entails, contradicts or leaves open. Each kind of object appears at most
  once in a scene and a scene may be cut off at the image's border, so a hypothesis about an object
  the image does not show is undecidable (neutral) unless it also says something false about one it
  shows. The three labels come in equal numbers with the same template ("the dog is red"), so the text alone
  says nothing about the label. (Hypotheses about two objects and their relation, "a red dog left of a blue
  cup", were a third of them until 2026-12-07: the demo's model got 43-49% of them right after 1,000 updates.)
* NLVR2 / MaRVL: statements about a pair of scenes ("the left image has a red dog and the right image
  has none", "both images have ...", "only one image has ...", "one image has <scene>"; the first three, about
  what each image shows, twice as often as the last; statements that count, "the left image has more objects
  than the right image" and "there are 5 objects in total", were dropped on 2026-12-07: after 1,000 updates
  the demo's model got 33% and 50% of them right, against 65-91% of the others). As NLVR2 was collected, each set holds two
  image pairs and statements true of exactly one of them: every statement comes once true and once
  false, so text alone is at chance.
* Flickr30K / xFlickr&CO: captions of the world's images (five per image for English training, one per
  image and language for test, drawn independently per language as xFlickr&CO's were).

Images: xGQA, XVNLI and the retrieval sets describe the world's own images, whose features are the
region store (OUT/regions/{train,valid,test}.json, ids = the annotation's image names without
extension). The pair tasks have images of their own, written as volta LMDBs as IGLUE's X101 features
are (npy_to_lmdb's values), to be imported with ``m3p-import-regions lmdb``. The first half of the
world's validation images is the English dev set, the second half the few-shot pool.

Files (ROOT = OUT/raw/iglue, mirroring e-bug/iglue's datasets/ and volta's features/ folders; English
training files unzipped, as volta reads them):

    gqa/annotations/{train,valid}.json, trainval_ans2label.json, trainval_label2ans.json
    xGQA/annotations/few_shot/{lang}/{test,dev,train_{1,5,10,20,25,48}}.json
    xGQA/annotations_machine-translate/few_shot/{lang}/test_gmt.json
    XVNLI/annotations/en/{train,dev}.jsonl, XVNLI/annotations/{lang}/{test,train_{1,...,48}}.jsonl
    XVNLI/annotations_machine-translate/{lang}/test.jsonl
    nlvr2/annotations/{train,dev,test}.jsonl, nlvr2/features/nlvr2_X101.lmdb
    marvl/zero_shot/annotations/marvl-{lang}.jsonl, marvl/features/marvl-{lang}_X101.lmdb
    marvl/zero_shot/annotations_machine-translate/marvl-{lang}_gmt.jsonl
    marvl/few_shot/annotations/marvl-{lang}_train{1,2,4,10,10x2}.jsonl, marvl/few_shot/features/marvl-{lang}_X101.lmdb
    flickr30k/annotations/{train,valid,test}_ann.jsonl
    xFlickrCO/annotations/{lang}/{test,train_{1,5,10,25,50,100}}.jsonl
    xFlickrCO/annotations_machine-translate/{lang}/test_gmt.jsonl
"""
import base64
import json
import os
import pickle
import shutil

import numpy as np

from .make_world import CAPTION_LANGS, COLOURS, NO_SPACE, OBJECTS, RELATIONS, World, noun_phrase, render

TEST_LANGS = CAPTION_LANGS[1:]  # zero-shot languages; English is trained on (and tested, as IGLUE does)
XGQA_SHOTS = (1, 5, 10, 20, 25, 48)  # images
XVNLI_SHOTS = (1, 5, 10, 20, 25, 48)  # images, three hypotheses each
XFLICKRCO_SHOTS = (1, 5, 10, 25, 50, 100)  # images, one caption each
MARVL_SHOTS = ("1", "2", "4", "10", "10x2")  # concepts; four statements each, eight for 10x2
XVNLI_LABELS = ("entailment", "contradiction", "neutral")
COUNTS = ("2", "3")  # objects in a scene: the answers of count questions

# words the question and statement templates need beyond the world's lexicon; English ones as they read
EN_WORDS = {"what": "what", "colour": "colour", "is": "is", "are": "are", "there": "there", "how_many": "how many",
            "objects": "objects", "q": "?", "left": "left", "right": "right", "image": "image",
            "images": "images", "both": "both", "only": "only", "one": "one", "none": "none", "have": "have"}

# Word order of each template per language. {np} is a colour + object phrase (object first in fr, as in
# the world's captions), {scene} a caption of the world's grammar; every other token is a concept.
TEMPLATES = {
    "q_colour": {"en": "what colour is the {o}", "de": "what colour has the {o}", "fr": "what colour is the {o}",
                 "cs": "what colour has {o}", "ja": "{o} the colour what is q", "zh": "{o} is what colour"},
    "q_object": {"en": "what is {rel} the {np}", "de": "what is {rel} the {np}", "fr": "what is {rel} the {np}",
                 "cs": "what is {rel} {np}", "ja": "{np} the {rel} what is q", "zh": "{np} the {rel} is what"},
    "q_relation": {"en": "is the {np1} {rel} the {np2}", "de": "is the {np1} {rel} the {np2}",
                   "fr": "is the {np1} {rel} the {np2}", "cs": "is {np1} {rel} {np2}",
                   "ja": "{np2} the {rel} with {np1} is q", "zh": "{np1} near {np2} the {rel} is q"},
    "q_exist": {"en": "is there a {np}", "de": "is there a {np}", "fr": "there is a {np} q", "cs": "is there {np}",
                "ja": "{np} there is q", "zh": "there is {np} q"},
    "q_count": {"en": "how_many objects are there", "de": "how_many objects are there",
                "fr": "how_many objects there are", "cs": "how_many objects is there", "ja": "objects how_many there is q",
                "zh": "there is how_many objects"},
    "h_colour": {"en": "the {o} is {c}", "de": "the {o} is {c}", "fr": "the {o} is {c}", "cs": "{o} is {c}",
                 "ja": "{o} the {c} is", "zh": "{o} is {c}"},
    "s_left_only": {"en": "the left image has a {np} and the right image has none",
                    "de": "the left image has a {np} and the right image has none",
                    "fr": "the image left has a {np} and the image right has none",
                    "cs": "left image has {np} and right image has none",
                    "ja": "left image the {np} has and right image the none", "zh": "left image has {np} and right image none"},
    "s_both": {"en": "both images have a {np}", "de": "both images have a {np}", "fr": "both images have a {np}",
               "cs": "both images have {np}", "ja": "both images the {np} has", "zh": "both images has {np}"},
    "s_one": {"en": "only one image has a {np}", "de": "only one image has a {np}", "fr": "only one image has a {np}",
              "cs": "only one image has {np}", "ja": "{np} the only one image has", "zh": "only one image has {np}"},
    "s_scene": {"en": "one image has {scene}", "de": "one image has {scene}", "fr": "one image has {scene}",
                "cs": "one image has {scene}", "ja": "one image the {scene} has", "zh": "one image has {scene}"},
}
# the pair templates, as often as each is picked in a set's turns: the statements about what each image shows twice as often
# as those about relations
PAIR_TURNS = ("s_left_only", "s_left_only", "s_both", "s_both", "s_one", "s_one", "s_scene")
# question kinds and their shares: no answer is right for more than about one question in eight
XGQA_KINDS = (("q_colour", 0.35), ("q_object", 0.3), ("q_relation", 0.125), ("q_exist", 0.125), ("q_count", 0.1))


def text_question(rng, scene):
    """(kind, slots): a question of one of xGQA's kinds (drawn by their shares) about the concepts of ``scene``
    ((c1, o1, rel, c2, o2), no image: the world's text corpora ask it, make_world.text_meaning)."""
    kinds, shares = zip(*XGQA_KINDS)
    kind = kinds[rng.choice(len(kinds), p=shares)]
    c1, o1, rel, c2, o2 = scene
    slots = {"q_colour": {"o": o1}, "q_object": {"rel": rel, "np": (c1, o1)},
             "q_relation": {"np1": (c1, o1), "rel": rel, "np2": (c2, o2)}, "q_exist": {"np": (c1, o1)}, "q_count": {}}
    return kind, slots[kind]


def ask(lex, lang, kind, slots):
    """A question from ``text_question`` in ``lang``, given the world's lexicon (without the template words)."""
    return say({lang: with_template_words(lex[lang])}, lang, kind, **slots)


def with_template_words(words):
    """One language's lexicon with the template words (shared by every language) added."""
    return {**words, **EN_WORDS}


def iglue_lexicon(world):
    """The world's lexicon plus the template words, per caption language. The template words are the same in every
    language, as the world's names and digits are (measured: with a word of its own per language for "what",
    "colour", "how many", which no corpus aligned, xGQA zero-shot fell below the majority answer, 6-8%), and a test
    in another language checks what pre-training can carry over: the world's lexicon in that language's words and
    word order (the questions' order too: the world's text asks them, make_world.text_meaning)."""
    return {lang: with_template_words(world.lex[lang]) for lang in CAPTION_LANGS}


def say(lex, lang, template, **slots):
    """Sentence ``template`` in ``lang``: slots o, c (concepts), np / np1 / np2 ((colour, object)), rel,
    n (a digit, shared by every language) and scene ((c1, o1, rel, c2, o2), the world's caption grammar).
    In ja and zh, written without spaces, the shared template words are set off by spaces, as Latin words are."""
    w, out = lex[lang], []  # (text, a shared template word)
    for token in TEMPLATES[template][lang].split():
        if token.startswith("{"):
            name = token[1:-1]
            value = slots[name]
            if name.startswith("np"):
                out += [(word, False) for word in noun_phrase(lex, lang, *value)]
            elif name == "scene":
                out.append((render(lex, lang, *value), False))
            elif name == "n":
                out.append((value, False))
            else:
                out.append((w[value], False))
        else:
            out.append((w[token], token in EN_WORDS))
    text = out[0][0]
    for (_, shared_before), (word, shared) in zip(out, out[1:]):
        text += ("" if lang in NO_SPACE and not (shared or shared_before) else " ") + word
    return text


# ---- scenes: placed objects (object index, colour index, box) ------------------------------------

def _has(scene, c, o):
    return any(OBJECTS[oi] == o and COLOURS[ci] == c for oi, ci, _ in scene)


def _find(scene, o):
    return next(((COLOURS[ci], box) for oi, ci, box in scene if OBJECTS[oi] == o), None)


def _scene_holds(scene, c1, o1, rel, c2, o2):
    a, b = _find(scene, o1), _find(scene, o2)
    return a is not None and b is not None and a[0] == c1 and b[0] == c2 and World.relation(a[1], b[1]) == rel


def _np(obj):
    return COLOURS[obj[1]], OBJECTS[obj[0]]


def _other(rng, options, not_this):
    choices = [x for x in options if x != not_this]
    return choices[rng.integers(len(choices))]


def _absent_object(rng, scene):
    present = {oi for oi, _, _ in scene}
    return OBJECTS[rng.choice([o for o in range(len(OBJECTS)) if o not in present])]


# ---- xGQA --------------------------------------------------------------------------------------------

def gqa_question(rng, scene, kind):
    """(slots, answer, semantic program) for a question of ``kind`` about ``scene``."""
    if kind == "q_colour":
        o, c, _ = scene[rng.integers(len(scene))]
        return {"o": OBJECTS[o]}, COLOURS[c], [("select", OBJECTS[o]), ("query", "color")]
    if kind == "q_object":
        order = rng.permutation(len(scene))
        for i in order:  # the reference; the answer is the one object in the asked relation to it
            for j in order:
                if i == j:
                    continue
                rel = World.relation(scene[j][2], scene[i][2])
                if sum(World.relation(x[2], scene[i][2]) == rel for k, x in enumerate(scene) if k != i) == 1:
                    return ({"rel": rel, "np": _np(scene[i])}, OBJECTS[scene[j][0]],
                            [("select", OBJECTS[scene[i][0]]), ("relate", f"_,{rel},s"), ("query", "name")])
        return None
    if kind == "q_relation":
        i, j = rng.choice(len(scene), 2, replace=False)
        rel = World.relation(scene[i][2], scene[j][2])
        yes = rng.random() < 0.5
        asked = rel if yes else _other(rng, RELATIONS, rel)
        return ({"np1": _np(scene[i]), "rel": asked, "np2": _np(scene[j])}, "yes" if yes else "no",
                [("select", OBJECTS[scene[j][0]]), ("verify rel", f"{OBJECTS[scene[i][0]]},{asked},s")])
    if kind == "q_exist":
        o, c, _ = scene[rng.integers(len(scene))]
        yes = rng.random() < 0.5
        if yes:
            np_ = (COLOURS[c], OBJECTS[o])
        elif rng.random() < 0.5:  # the object is there in another colour
            np_ = (_other(rng, COLOURS, COLOURS[c]), OBJECTS[o])
        else:
            np_ = (COLOURS[rng.integers(len(COLOURS))], _absent_object(rng, scene))
        return {"np": np_}, "yes" if yes else "no", [("select", np_[1]), ("filter color", np_[0]), ("exist", "?")]
    if kind == "q_count":
        return {}, str(len(scene)), [("select", "objects"), ("count", "")]
    raise ValueError(kind)


GQA_TYPES = {"q_colour": ("directWhich", "attr", "query"), "q_object": ("relS", "rel", "query"),
             "q_relation": ("relVerify", "rel", "verify"), "q_exist": ("existAttr", "obj", "verify"),
             "q_count": ("count", "obj", "query")}


def gqa_questions(rng, scenes, per_image, qid_prefix):
    """[(qid, image id, kind, slots, answer, program)]: ``per_image`` questions per scene, kinds drawn by
    their shares (a kind that does not apply to a scene is drawn again)."""
    kinds, shares = zip(*XGQA_KINDS)
    out = []
    for n, (image_id, scene) in enumerate(scenes):
        for k in range(per_image):
            q = None
            while q is None:
                kind = kinds[rng.choice(len(kinds), p=shares)]
                q = gqa_question(rng, scene, kind)
            out.append((f"{qid_prefix}{n:06d}{k:02d}", image_id, kind) + q)
    return out


def gqa_record(lex, lang, qid, image_id, kind, slots, answer, program):
    """One question as GQA's question files hold it (and xGQA's few-shot files)."""
    semantic = [{"operation": op, "dependencies": [] if i == 0 else [i - 1], "argument": arg}
                for i, (op, arg) in enumerate(program)]
    detailed, sem, structural = GQA_TYPES[kind]
    return {"semantic": semantic, "entailed": [], "equivalent": [qid], "question": say(lex, lang, kind, **slots),
            "imageId": image_id, "isBalanced": True, "groups": {"global": None, "local": kind},
            "answer": answer, "semanticStr": "->".join(f"{op}: {arg}" for op, arg in program),
            "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
            "types": {"detailed": detailed, "semantic": sem, "structural": structural},
            "fullAnswer": answer}


def write_xgqa(root, lex, rng, scenes, dev, pool, n_train, per_test_image):
    ann = os.path.join(root, "gqa", "annotations")
    answers = sorted(set(COLOURS) | set(OBJECTS) | {"yes", "no"} | set(COUNTS))
    _dump(os.path.join(ann, "trainval_ans2label.json"), {a: i for i, a in enumerate(answers)})
    _dump(os.path.join(ann, "trainval_label2ans.json"), answers)
    train = scenes["train"]
    per_image = max(1, -(-n_train // len(train)))
    sets = {"train": gqa_questions(rng, train, per_image, "1")[:n_train],
            "valid": gqa_questions(rng, dev, 6, "2"), "test": gqa_questions(rng, scenes["test"], per_test_image, "3")}
    for split in ("train", "valid"):  # LXMERT's form, which volta trains on: soft answer scores
        _dump(os.path.join(ann, f"{split}.json"),
              [{"img_id": image_id, "label": {answer: 1.0}, "question_id": qid, "sent": say(lex, "en", kind, **slots)}
               for qid, image_id, kind, slots, answer, _ in sets[split]])
    pool_questions = gqa_questions(rng, pool[:max(XGQA_SHOTS)], 3, "4")  # nested: the n-shot set is the first n images'
    shots = {n: pool_questions[:3 * n] for n in XGQA_SHOTS if n <= len(pool)}
    few = os.path.join(root, "xGQA", "annotations", "few_shot")
    for lang in CAPTION_LANGS:
        def questions(items, in_lang=lang):
            return {q[0]: gqa_record(lex, in_lang, *q) for q in items}

        _dump(os.path.join(few, lang, "test.json"), questions(sets["test"]))
        _dump(os.path.join(few, lang, "dev.json"), questions(sets["valid"]))
        for n, items in shots.items():
            _dump(os.path.join(few, lang, f"train_{n}.json"), questions(items))
        if lang != "en":  # translate-test: the same questions, in English
            _dump(os.path.join(root, "xGQA", "annotations_machine-translate", "few_shot", lang, "test_gmt.json"),
                  questions(sets["test"], "en"))
    return sets


# ---- XVNLI -------------------------------------------------------------------------------------------

def xvnli_hypothesis(rng, scene, label):
    """(template, slots) of a hypothesis with ``label`` about ``scene``, "the dog is red": entailed (an object it
    shows, in its colour), contradicted (in another colour) or left open (an object the image does not show)."""
    o, c, _ = scene[rng.integers(len(scene))]
    if label == "entailment":
        return "h_colour", {"o": OBJECTS[o], "c": COLOURS[c]}
    if label == "contradiction":
        return "h_colour", {"o": OBJECTS[o], "c": _other(rng, COLOURS, COLOURS[c])}
    return "h_colour", {"o": _absent_object(rng, scene), "c": COLOURS[rng.integers(len(COLOURS))]}


def xvnli_examples(rng, scenes, rounds):
    """[(image id, caption pair, label, template, slots, k)]: ``rounds`` hypotheses of each label per scene."""
    out = []
    for image_id, scene in scenes:
        pair = tuple(int(x) for x in rng.choice(len(scene), 2, replace=False))  # the premise: a caption
        for k in range(rounds):
            for label in rng.permutation(XVNLI_LABELS):
                out.append((image_id, pair, str(label), *xvnli_hypothesis(rng, scene, str(label)), k))
    return out


def xvnli_record(world, lex, lang, scene_of, image_id, pair, label, template, slots, k):
    return {"gold_label": label, "sentence1": world.caption(None, scene_of[image_id], lang, pair),
            "sentence2": say(lex, lang, template, **slots), "captionID": f"{image_id}.jpg#{k}",
            "pairID": f"{image_id}.jpg#{k}r1{label[0]}", "Flikr30kID": image_id}


def write_xvnli(root, world, lex, rng, scenes, dev, pool, n_train, test_rounds):
    scene_of = dict(scenes["train"] + scenes["test"] + dev + pool)
    train = scenes["train"][:max(1, -(-n_train // 3))]
    sets = {"train": xvnli_examples(rng, train, 1)[:n_train], "dev": xvnli_examples(rng, dev, 2),
            "test": xvnli_examples(rng, scenes["test"], test_rounds)}
    pool_examples = xvnli_examples(rng, pool[:max(XVNLI_SHOTS)], 1)  # nested, three hypotheses per image
    shots = {n: pool_examples[:3 * n] for n in XVNLI_SHOTS if n <= len(pool)}
    ann = os.path.join(root, "XVNLI", "annotations")

    def records(items, lang):
        return [xvnli_record(world, lex, lang, scene_of, *item) for item in items]

    for split in ("train", "dev"):
        _dump_lines(os.path.join(ann, "en", f"{split}.jsonl"), records(sets[split], "en"))
    for lang in CAPTION_LANGS:
        _dump_lines(os.path.join(ann, lang, "test.jsonl"), records(sets["test"], lang))
        for n, items in shots.items():
            _dump_lines(os.path.join(ann, lang, f"train_{n}.jsonl"), records(items, lang))
        if lang != "en":
            _dump_lines(os.path.join(root, "XVNLI", "annotations_machine-translate", lang, "test.jsonl"),
                        records(sets["test"], "en"))
    return sets


# ---- NLVR2 / MaRVL: statements about pairs of scenes -------------------------------------------------

def pair_truth(template, slots, left, right):
    if template == "s_left_only":
        return _has(left, *slots["np"]) and not _has(right, *slots["np"])
    if template == "s_both":
        return _has(left, *slots["np"]) and _has(right, *slots["np"])
    if template == "s_one":
        return _has(left, *slots["np"]) != _has(right, *slots["np"])
    if template == "s_scene":
        return _scene_holds(left, *slots["scene"]) or _scene_holds(right, *slots["scene"])
    raise ValueError(template)


def _candidates(rng, scenes, concept, palette):
    """Statements worth asking of a set's scenes: about its concept object in the set's colours, the
    objects the scenes show and their relations (said as they are, or turned)."""
    nps = {(c, concept) for c in palette} | {_np(x) for s in scenes for x in s}
    out = [(t, {"np": np_}) for np_ in sorted(nps) for t in ("s_left_only", "s_both", "s_one")]
    for s in scenes:
        for i in range(len(s)):
            for j in range(len(s)):
                if i != j:
                    rel = World.relation(s[i][2], s[j][2])
                    for r in (rel, _other(rng, RELATIONS, rel)):
                        out.append(("s_scene", {"scene": (*_np(s[i]), r, *_np(s[j]))}))
    return out


def _scene_objects(rng, concept, palette):
    """2 or 3 objects; the set's concept object in one of its colours in 60% of the scenes."""
    n = int(rng.integers(2, 4))
    others = [o for o in range(len(OBJECTS)) if o != concept]
    chosen = [int(o) for o in rng.choice(others, n, replace=False)]
    if rng.random() < 0.6:
        chosen[0] = concept
    objects = [(o, int(rng.integers(len(COLOURS)))) for o in chosen]
    if objects[0][0] == concept:
        objects[0] = (concept, palette[int(rng.integers(len(palette)))])
    return objects


def pair_set(world, rng, n_statements):
    """(concept, four images (regions, scene), statements): images 0-1 are one pair (left, right),
    2-3 the other; each statement is true of exactly one pair, the templates taken in turn."""
    while True:
        concept = int(rng.integers(len(OBJECTS)))
        palette = [int(c) for c in rng.choice(len(COLOURS), 2, replace=False)]
        images = [world.make_image(rng, _scene_objects(rng, concept, palette)) for _ in range(4)]
        scenes = [scene for _, scene in images]
        by_template = {}
        for template, slots in _candidates(rng, scenes, OBJECTS[concept], [COLOURS[c] for c in palette]):
            if pair_truth(template, slots, *scenes[:2]) != pair_truth(template, slots, *scenes[2:]):
                by_template.setdefault(template, []).append(slots)
        picked, turns = [], [str(t) for t in rng.permutation(PAIR_TURNS)]
        while len(picked) < n_statements and any(by_template.get(t) for t in turns):
            for template in turns:
                options = by_template.get(template)
                if options:
                    picked.append((template, options.pop(int(rng.integers(len(options))))))
                    if len(picked) == n_statements:
                        break
        if len(picked) == n_statements:
            return concept, images, picked


def pair_sets(world, rng, n_sets, n_statements):
    return [pair_set(world, rng, n_statements) for _ in range(n_sets)]


def nlvr2_records(lex, split, sets, first_set=0):
    out = []
    for s, (concept, images, statements) in enumerate(sets, first_set):
        for p in range(2):
            left, right = images[2 * p][1], images[2 * p + 1][1]
            for k, (template, slots) in enumerate(statements):
                stem = f"{split}-{s}-{p}"
                label = pair_truth(template, slots, left, right)
                out.append({"validation": {}, "sentence": say(lex, "en", template, **slots),
                            "left_url": f"{stem}-img0.png", "writer": "world", "label": str(label),
                            "right_url": f"{stem}-img1.png", "synset": OBJECTS[concept],
                            "query": f"{OBJECTS[concept]}{s}", "identifier": f"{stem}-{k}", "extra_validations": {}})
    return out


def nlvr2_images(split, sets, first_set=0):
    return [(f"{split}-{s}-{p}-img{i}", images[2 * p + i][0])
            for s, (_, images, _) in enumerate(sets, first_set) for p in range(2) for i in range(2)]


def marvl_records(lex, lang, sets, first_concept, caption_lang=None, statements=None):
    """MaRVL's records; ``caption_lang`` English for translate-test, ``statements`` the first so many of each set."""
    out = []
    for s, (concept, images, stmts) in enumerate(sets, first_concept):
        for k, (template, slots) in enumerate(stmts[:statements]):
            for p in range(2):
                left, right = images[2 * p][1], images[2 * p + 1][1]
                out.append({"concept": f"{s}-{lex[lang][OBJECTS[concept]]}", "language": lang,
                            "caption": say(lex, caption_lang or lang, template, **slots),
                            "left_img": f"{s}-{2 * p + 1}.jpg", "right_img": f"{s}-{2 * p + 2}.jpg",
                            "annotator_info": {"annotator_id": f"{lang}_world", "country_of_birth": "world",
                                               "country_of_residence": "world", "gender": "-", "age": 0},
                            "chapter": "The world", "id": f"{lang}-{len(out)}",
                            "label": pair_truth(template, slots, left, right)})
    return out


def marvl_images(sets, first_concept):
    return [(f"{s}-{i + 1}", images[i][0]) for s, (_, images, _) in enumerate(sets, first_concept) for i in range(4)]


def write_pairs(root, world, lex, seed, n_train, n_test):
    """NLVR2 (English) and MaRVL (every test language) with their images as volta LMDBs."""
    rng = np.random.default_rng([seed, 95, 3])
    train_stmts, eval_stmts = 8, 4
    sets = {"train": pair_sets(world, rng, max(1, n_train // (2 * train_stmts)), train_stmts),
            "dev": pair_sets(world, rng, max(1, n_test // (4 * eval_stmts)), eval_stmts),
            "test": pair_sets(world, rng, max(1, n_test // (2 * eval_stmts)), eval_stmts)}
    for split, split_sets in sets.items():
        _dump_lines(os.path.join(root, "nlvr2", "annotations", f"{split}.jsonl"), nlvr2_records(lex, split, split_sets))
    write_volta_lmdb(os.path.join(root, "nlvr2", "features", "nlvr2_X101.lmdb"),
                     [item for split, split_sets in sets.items() for item in nlvr2_images(split, split_sets)])
    marvl = {}
    for k, lang in enumerate(TEST_LANGS):
        lrng = np.random.default_rng([seed, 95, 4, k])  # each language its own images, as MaRVL's are
        test = pair_sets(world, lrng, max(1, n_test // (2 * eval_stmts)), eval_stmts)
        few = pair_sets(world, lrng, 10, 4)
        zero = os.path.join(root, "marvl", "zero_shot")
        _dump_lines(os.path.join(zero, "annotations", f"marvl-{lang}.jsonl"), marvl_records(lex, lang, test, 1))
        _dump_lines(os.path.join(zero, "annotations_machine-translate", f"marvl-{lang}_gmt.jsonl"),
                    marvl_records(lex, lang, test, 1, caption_lang="en"))
        write_volta_lmdb(os.path.join(root, "marvl", "features", f"marvl-{lang}_X101.lmdb"), marvl_images(test, 1))
        for shots in MARVL_SHOTS:
            concepts = int(shots.split("x")[0])
            _dump_lines(os.path.join(root, "marvl", "few_shot", "annotations", f"marvl-{lang}_train{shots}.jsonl"),
                        marvl_records(lex, lang, few[:concepts], 101, statements=4 if "x" in shots else 2))
        write_volta_lmdb(os.path.join(root, "marvl", "few_shot", "features", f"marvl-{lang}_X101.lmdb"),
                         marvl_images(few, 101))
        marvl[lang] = test
    return sets, marvl


def write_volta_lmdb(path, images):
    """An LMDB folder as volta's npy_to_lmdb.py writes it: key = image id, value = the pickled dict of
    base64 float32 ``features`` / ``boxes`` with the extractor's info; ``keys`` the pickled key list.
    Written beside ``path`` and moved into place when complete."""
    import lmdb

    values = []
    for image_id, r in images:
        item = {"feature_path": image_id, "features": base64.b64encode(np.ascontiguousarray(r["features"], np.float32)),
                "img_h": int(r["height"]), "img_w": int(r["width"]), "num_boxes": len(r["boxes"]),
                "objects": np.asarray(r["classes"], dtype=np.int64), "cls_prob": None,
                "boxes": base64.b64encode(np.ascontiguousarray(r["boxes"], np.float32))}
        values.append((image_id.encode(), pickle.dumps(item)))
    values.append((b"keys", pickle.dumps([k for k, _ in values])))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    env = lmdb.open(tmp, map_size=2 * sum(len(v) for _, v in values) + (1 << 24))
    with env.begin(write=True) as txn:
        for key, value in values:
            txn.put(key, value)
    env.close()
    shutil.rmtree(path, ignore_errors=True)
    os.rename(tmp, path)


# ---- Flickr30K / xFlickr&CO ------------------------------------------------------------------------------

def _captions(world, rng, scene, langs, k):
    """Captions of ``k`` different object pairs of the scene, each in every language of ``langs``."""
    pairs = [(i, j) for i in range(len(scene)) for j in range(len(scene)) if i != j]
    picked = [pairs[int(x)] for x in rng.permutation(len(pairs))[:k]]
    return {lang: [world.caption(None, scene, lang, p) for p in picked] for lang in langs}


def write_retrieval(root, world, rng, scenes, dev, pool):
    ann = os.path.join(root, "flickr30k", "annotations")
    for split, items in (("train", scenes["train"]), ("valid", dev), ("test", scenes["test"])):
        _dump_lines(os.path.join(ann, f"{split}_ann.jsonl"),
                    [{"sentences": _captions(world, rng, scene, ["en"], 5)["en"], "id": image_id,
                      "img_path": f"{image_id}.jpg"} for image_id, scene in items])
    x = os.path.join(root, "xFlickrCO")
    for lang in CAPTION_LANGS:
        # one caption per image, drawn for each language on its own (xFlickr&CO's were written, not translated)
        test = [(image_id, _captions(world, rng, scene, [lang, "en"], 1)) for image_id, scene in scenes["test"]]
        _dump_lines(os.path.join(x, "annotations", lang, "test.jsonl"),
                    [{"sentences": caps[lang], "id": image_id, "img_path": f"{image_id}.jpg"} for image_id, caps in test])
        if lang == "en":
            continue
        _dump_lines(os.path.join(x, "annotations_machine-translate", lang, "test_gmt.jsonl"),
                    [{"sentences": caps["en"], "id": image_id, "img_path": f"{image_id}.jpg"} for image_id, caps in test])
        few = [(image_id, _captions(world, rng, scene, [lang], 1)[lang]) for image_id, scene in pool]
        for n in XFLICKRCO_SHOTS:
            if n <= len(few):
                _dump_lines(os.path.join(x, "annotations", lang, f"train_{n}.jsonl"),
                            [{"sentences": caps, "id": image_id, "img_path": f"{image_id}.jpg"}
                             for image_id, caps in few[:n]])


# ---- all of them ---------------------------------------------------------------------------------------

def write_iglue(world, out, scenes, seed, n_train, n_test):
    """Every set above under OUT/raw/iglue; ``n_train`` English training examples per task, about
    ``n_test`` test examples per task and language. Each task draws from its own random stream."""
    root = os.path.join(out, "raw", "iglue")
    lex = iglue_lexicon(world)
    half = len(scenes["valid"]) // 2
    dev, pool = scenes["valid"][:half], scenes["valid"][half:]
    per_test_image = max(1, -(-n_test // len(scenes["test"])))
    write_xgqa(root, lex, np.random.default_rng([seed, 95, 1]), scenes, dev, pool, n_train, per_test_image)
    write_xvnli(root, world, lex, np.random.default_rng([seed, 95, 2]), scenes, dev, pool, n_train,
                max(1, -(-n_test // (3 * len(scenes["test"])))))
    write_pairs(root, world, lex, seed, n_train, n_test)
    write_retrieval(root, world, np.random.default_rng([seed, 95, 5]), scenes, dev, pool)
    return root


def _dump(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, ensure_ascii=False))  # dumps runs in C; dump encodes in Python
    os.replace(path + ".tmp", path)


def _dump_lines(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)
