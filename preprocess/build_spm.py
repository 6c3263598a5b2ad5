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


def train(inputs, out_dir, vocab_size=2000, max_lines_per_file=200000, seed_sentencepiece=True):
    import sentencepiece as spm

    check_writable(out_dir, folder=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as out:
            for path in inputs:
                with open(path, encoding="utf-8") as f:
                    for i, line in enumerate(f):
                        if i >= max_lines_per_file:
                            break
                        out.write(line)
        prefix = os.path.join(tmp, "spm")
        if seed_sentencepiece:  # the same pieces on every run (sampling and shuffling use this seed)
            spm.set_random_generator_seed(1)
        try:
            spm.SentencePieceTrainer.train(
                input=corpus, model_prefix=prefix, vocab_size=vocab_size, model_type="unigram",
                character_coverage=1.0, bos_id=0, pad_id=1, eos_id=2, unk_id=3,
                input_sentence_size=1000000, shuffle_input_sentence=True, minloglevel=2,
                hard_vocab_limit=False,
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
    a = p.parse_args(argv)
    for path in a.inputs:
        require_file(path, "raw text file")
    n = train(a.inputs, a.out_dir, a.vocab_size, a.max_lines_per_file)
    print(f"sentencepiece model with {n} pieces written to {a.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
