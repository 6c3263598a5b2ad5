"""Do generated captions of the embedded world name the right objects? Measured against chance.

    python examples/m3p/caption_objects.py --world demo-output/world --langs en,de \\
        --gen "demo-output/captions/gen.{lang}.txt" [--results demo-output/results.json]

``--gen`` names the fairseq-generate log of the m3p_captioning task of each language (D- lines:
hypotheses, T- lines: the reference of each test image). The world's lexicon (rebuilt from its seed) tells which
words are object names in each language; ja and zh, written without spaces, are segmented by
longest match over the lexicon. An object a hypothesis names is right when the reference names
it. Printed and stored (percentages):

* object_precision: right object mentions / object mentions;
* object_recall: reference objects the hypothesis names / reference objects;
* pair_match: hypotheses naming exactly the reference's objects;
* chance_object_precision, chance_pair_match: the same for objects named at random (a random
  object is right with probability |reference objects| / |objects|; a random pair with 1 / C(24, 2)).
"""
import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from m3p_fairseq.evaluation.caption_metrics import read_generate_output  # noqa: E402
from m3p_fairseq.evaluation.results import update_results  # noqa: E402
from preprocess.make_world import NO_SPACE, OBJECTS, world_lexicon  # noqa: E402


def segment(text, vocab, no_space):
    """Words of ``text``: split on spaces, or longest match over ``vocab`` when the language has none."""
    if not no_space:
        return text.split()
    text, words, i = text.replace(" ", ""), [], 0
    longest = max(map(len, vocab))
    while i < len(text):
        for n in range(min(longest, len(text) - i), 0, -1):
            if text[i:i + n] in vocab:
                words.append(text[i:i + n])
                i += n
                break
        else:
            i += 1  # not a lexicon word: skip a character
    return words


def object_scores(hyps, refs, lex, lang):
    name_of = {lex[lang][o]: o for o in OBJECTS}
    vocab = {w for w in lex[lang].values() if " " not in w}
    named = right = ref_total = recalled = pairs = 0
    chance = 0.0
    for h, r in zip(hyps, refs):
        ho = {name_of[w] for w in segment(h, vocab, lang in NO_SPACE) if w in name_of}
        ro = {name_of[w] for w in segment(r, vocab, lang in NO_SPACE) if w in name_of}
        named, right = named + len(ho), right + len(ho & ro)
        ref_total, recalled = ref_total + len(ro), recalled + len(ho & ro)
        pairs += int(bool(ro) and ho == ro)
        chance += len(ro) / len(OBJECTS)
    n = max(len(hyps), 1)
    return {"object_precision": round(100.0 * right / max(named, 1), 2),
            "object_recall": round(100.0 * recalled / max(ref_total, 1), 2),
            "pair_match": round(100.0 * pairs / n, 2),
            "chance_object_precision": round(100.0 * chance / n, 2),
            "chance_pair_match": round(100.0 / math.comb(len(OBJECTS), 2), 2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", required=True, help="folder written by m3p-make-world (world.json)")
    p.add_argument("--langs", required=True, help="comma-separated caption languages")
    p.add_argument("--gen", required=True, help="fairseq-generate log per language, {lang} standing for it")
    p.add_argument("--results", default=None, help="results JSON: adds KEY.LANG.* and the chance levels")
    p.add_argument("--key", default="captioning", help="the results section (default: captioning)")
    a = p.parse_args(argv)
    lex = world_lexicon(a.world)
    for lang in a.langs.split(","):
        path = a.gen.format(lang=lang)
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        hyps, refs = read_generate_output(lines, "D"), read_generate_output(lines, "T")
        if not hyps or not refs or len(hyps) != len(refs):
            raise SystemExit(f"caption_objects: {path}: expected the D- and T- lines of fairseq-generate")
        scores = object_scores(hyps, refs, lex, lang)
        print(json.dumps({lang: scores}))
        examples = "; ".join(f"{h!r} (ref {r!r})" for h, r in list(zip(hyps, refs))[:1])
        print(f"{lang}: objects right {scores['object_precision']}% (chance {scores['chance_object_precision']}%), "
              f"e.g. {examples}", file=sys.stderr)
        if a.results:
            chance = {k: scores.pop(k) for k in ("chance_object_precision", "chance_pair_match")}
            update_results(a.results, f"{a.key}.{lang}", scores)
            update_results(a.results, a.key, chance)


if __name__ == "__main__":
    main()
