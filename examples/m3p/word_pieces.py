"""How often the embedded world's content words are whole sentencepiece pieces in the test captions.

    python examples/m3p/word_pieces.py --world demo-output/world --data demo-output/data --langs de,fr,cs,ja,zh

A word that is always one piece (or a fixed run of whole pieces) has a stable token whose embedding the
parallel-text objectives can align with its translation; a word that sentencepiece merges with its
neighbours surfaces as different pieces in different captions, so no token stands for it. This measures
that, per language, over the colour and object words of the world's lexicon, in the test captions. It
was the measured reason zero-shot retrieval did not reach Japanese (0% of its katakana words whole pieces
when the world's tokenizer trained on its unspaced text as it is); the world's tokenizer now trains on its
Japanese and Chinese text split at word boundaries (preprocess/prepare_world.py): 99% and 98% in the demo
of 2026-12-07, every other caption language 94-100%.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from preprocess.make_world import COLOURS, OBJECTS, raw_captions, world_lexicon  # noqa: E402

SPACE = "\u2581"


def whole_piece_share(pieces_of, lines, words):
    """(occurrences of ``words`` that start and end on piece boundaries, all occurrences) in ``lines``."""
    whole = total = 0
    for line in lines:
        pieces = pieces_of(line)
        text = "".join(pieces)
        bounds, i = {0}, 0
        for p in pieces:
            i += len(p)
            bounds.add(i)
        for w in words:
            k = text.find(w)
            while k >= 0:
                total += 1
                start_ok = k in bounds or (k > 0 and text[k - 1] == SPACE and k - 1 in bounds)
                whole += start_ok and k + len(w) in bounds
                k = text.find(w, k + 1)
    return whole, total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", required=True, help="the world folder (m3p-make-world's output)")
    p.add_argument("--data", required=True, help="the data folder (its sentencepiece.bpe.model)")
    p.add_argument("--langs", default="de,fr,cs,ja,zh")
    p.add_argument("--split", default="test")
    p.add_argument("--results", help="results JSON to update ({lang: {whole_pieces: percent}} under --key)")
    p.add_argument("--key", default="tokenization")
    a = p.parse_args(argv)
    import sentencepiece as spm

    lexicon = world_lexicon(a.world)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(a.data, "sentencepiece.bpe.model"))
    shares = {}
    for lang in a.langs.split(","):
        with open(raw_captions(a.world, a.split, lang), encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
        whole, total = whole_piece_share(lambda s: sp.encode(s, out_type=str), lines,
                                         [lexicon[lang][c] for c in COLOURS + OBJECTS])
        shares[lang] = {"whole_pieces": round(100.0 * whole / max(total, 1), 1), "words": total}
        print(f"{lang}: {whole} of {total} colour/object words in {a.split} captions are whole pieces "
              f"({shares[lang]['whole_pieces']:.0f}%)")
    if a.results:
        from m3p_fairseq.evaluation.results import update_results

        update_results(a.results, a.key, shares)


if __name__ == "__main__":
    main()
