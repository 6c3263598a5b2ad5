"""Train a sentencepiece model on raw text and write a fairseq dict.txt whose ids equal its ids.

Real runs use XLM-R's ``sentencepiece.bpe.model`` and ``dict.txt`` unchanged; this is for the
embedded world and for corpora of your own. The model is trained with <s>=0, <pad>=1, </s>=2,
<unk>=3 (fairseq's Dictionary offsets), and dict.txt lists the pieces from id 4 on, so a
sentencepiece id is the fairseq id and ``<mask>`` (added by the tasks) comes last, as in XLM-R.
"""
import argparse
import os
import shutil
import sys
import tempfile

from m3p_fairseq.errors import M3PInputError, command, require_file
from m3p_fairseq.outputs import Staging, check_writable


MODEL_TYPES = ("unigram", "bpe")
WORD_DELIMITER = "\u2016"  # marks word boundaries in training text written without spaces (sentencepiece's
# pretokenization_delimiter: no piece crosses it, and it never reaches the model)


def train(inputs, out_dir, vocab_size=2000, max_lines_per_file=200000, seed_sentencepiece=True, model_type="unigram",
          words=None):
    """Train on the lines of ``inputs``. ``words``: {input path: line -> [words]} for text written without spaces
    whose word boundaries are known (the embedded world's Japanese and Chinese): its pieces then stay inside words,
    as a tokenizer trained on a large varied corpus learns them, instead of spanning the collocations of a small one."""
    import sentencepiece as spm

    check_writable(out_dir, folder=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as out:
            for path in inputs:
                split = (words or {}).get(path)
                with open(path, encoding="utf-8") as f:
                    for i, line in enumerate(f):
                        if i >= max_lines_per_file:
                            break
                        if split and WORD_DELIMITER in line:
                            raise M3PInputError(f"{path}: line {i + 1}: holds U+2016, the word delimiter of training")
                        out.write(WORD_DELIMITER.join(split(line.rstrip("\n"))) + "\n" if split else line)
        prefix = os.path.join(tmp, "spm")
        if seed_sentencepiece:  # the same pieces on every run (sampling and shuffling use this seed)
            spm.set_random_generator_seed(1)
        try:
            spm.SentencePieceTrainer.train(
                input=corpus, model_prefix=prefix, vocab_size=vocab_size, model_type=model_type,
                character_coverage=1.0, bos_id=0, pad_id=1, eos_id=2, unk_id=3,
                input_sentence_size=1000000, shuffle_input_sentence=True, minloglevel=2,
                hard_vocab_limit=False, **({"pretokenization_delimiter": WORD_DELIMITER} if words else {}),
            )
        except RuntimeError as e:  # empty input, too few characters for the vocabulary ...
            raise M3PInputError(f"{', '.join(inputs)}: sentencepiece cannot train on this text "
                                f"({(str(e).strip().splitlines() or [''])[-1][:200]})")
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
        with Staging() as out:
            shutil.copyfile(prefix + ".model", out.file(os.path.join(out_dir, "sentencepiece.bpe.model")))
            with open(out.file(os.path.join(out_dir, "dict.txt")), "w", encoding="utf-8") as f:
                for i in range(4, sp.get_piece_size()):
                    f.write(f"{sp.id_to_piece(i)} 1\n")
    return sp.get_piece_size()


@command("m3p-build-spm")
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir", help="receives sentencepiece.bpe.model and dict.txt")
    p.add_argument("inputs", nargs="+", help="raw text files, one sentence a line")
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--max-lines-per-file", type=int, default=200000)
    p.add_argument("--model-type", choices=MODEL_TYPES, default="unigram",
                   help="sentencepiece's algorithm (XLM-R's model is unigram; the embedded world's is bpe)")
    a = p.parse_args(argv)
    for path in a.inputs:
        require_file(path, "raw text file")
    n = train(a.inputs, a.out_dir, a.vocab_size, a.max_lines_per_file, model_type=a.model_type)
    print(f"sentencepiece model with {n} pieces written to {a.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
