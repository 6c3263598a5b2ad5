"""Which language a generated text is written in: the ``right_language`` share of NTG, captioning and MMT.

The paper steers the generation model's output language by feeding the target language's id to the
encoder and the decoder; whether that works is measured by identifying the language of every output.
The identifier is a multinomial naive Bayes over sentencepiece pieces, trained on the data folder's
own multilingual corpus (``DATA/text/{lang}/train``, the xMLM/xDAE text, already binarized with the
model's dictionary), so it knows exactly the languages and the pieces the model was trained on and
needs nothing downloaded. Pieces every language uses (names, digits, punctuation) weigh about the
same for all languages and do not decide; a language's own words do. Special symbols are ignored;
an output without any other piece is in no language.

    lid = LanguageIdentifier.from_data("DATA", dictionary)
    lid.identify(token_ids)                     # "de"
    lid.share([ids1, ids2, ...], "de")          # 95.0: percent of outputs identified as German
    lid, encode = for_texts("DATA")              # texts (m3p-caption-score --lang-id DATA)
    lid.share([encode(t) for t in texts], "de")
"""
import logging
import os

import numpy as np

from ..errors import M3PDataError

logger = logging.getLogger(__name__)


class LanguageIdentifier:
    def __init__(self, langs, log_probs, special_ids):
        """``log_probs``: languages x dictionary, log P(piece | language) (add-one smoothed)."""
        self.langs = list(langs)
        self.log_probs = log_probs
        self.special = np.asarray(sorted(special_ids), dtype=np.int64)

    @classmethod
    def from_counts(cls, counts, special_ids):
        """``counts``: {language: piece counts over the dictionary} -> the identifier."""
        langs = sorted(counts)
        table = np.stack([np.asarray(counts[l], dtype=np.float64) for l in langs])
        table[:, sorted(special_ids)] = 0
        log_probs = np.log(table + 1.0) - np.log(table.sum(1, keepdims=True) + table.shape[1])
        return cls(langs, log_probs, special_ids)

    @classmethod
    def from_data(cls, data_dir, dictionary, langs=None, split="train", max_tokens=2_000_000):
        """Trained on ``data_dir/text/{lang}/{split}`` for every language folder there (or ``langs``), at most
        ``max_tokens`` pieces per language (the corpus's first lines)."""
        from fairseq.data import data_utils

        root = os.path.join(data_dir, "text")
        if langs is None:
            langs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))) \
                if os.path.isdir(root) else []
        if not langs:
            raise M3PDataError(f"{root}: no language folders to learn the languages from (the xMLM text corpus)")
        counts = {}
        for lang in langs:
            prefix = os.path.join(root, lang, split)
            ds = data_utils.load_indexed_dataset(prefix, dictionary, combine=False)
            if ds is None:
                raise M3PDataError(f"{prefix}.bin: {lang} text not found")
            c = np.zeros(len(dictionary), dtype=np.int64)
            seen = 0
            for i in range(len(ds)):
                ids = ds[i].numpy()
                c += np.bincount(ids, minlength=len(dictionary))[: len(dictionary)]
                seen += len(ids)
                if seen >= max_tokens:
                    break
            counts[lang] = c
        specials = {dictionary.bos(), dictionary.pad(), dictionary.eos(), dictionary.unk()}
        if "<mask>" in dictionary.indices:
            specials.add(dictionary.index("<mask>"))
        return cls.from_counts(counts, specials)

    def identify(self, token_ids):
        """The most likely language of one text (a sequence of dictionary ids), or None without any piece."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        ids = ids[~np.isin(ids, self.special) & (ids >= 0) & (ids < self.log_probs.shape[1])]
        if len(ids) == 0:
            return None
        return self.langs[int(np.argmax(self.log_probs[:, ids].sum(1)))]

    def share(self, texts, lang):
        """Percent of ``texts`` (id sequences) identified as ``lang``; None for no texts."""
        if lang not in self.langs:
            raise M3PDataError(f"language {lang!r} is not one the identifier knows ({', '.join(self.langs)}): "
                               f"no DATA/text/{lang} corpus")
        texts = list(texts)
        if not texts:
            return None
        return round(100.0 * sum(self.identify(t) == lang for t in texts) / len(texts), 2)


def for_texts(data_dir):
    """(identifier, encode) for plain texts: ``encode`` turns a text into dictionary ids as the model reads
    it (DATA/sentencepiece.bpe.model, DATA/dict.txt)."""
    import sentencepiece as spm
    from fairseq.data import Dictionary

    paths = [os.path.join(data_dir, name) for name in ("dict.txt", "sentencepiece.bpe.model")]
    for path in paths:
        if not os.path.isfile(path):
            raise M3PDataError(f"{path}: not found (the language identifier reads the data folder's dictionary, "
                               f"sentencepiece model and text corpus)")
    dictionary = Dictionary.load(paths[0])
    sp = spm.SentencePieceProcessor(model_file=paths[1])

    def encode(text):
        pieces = " ".join(sp.encode(text, out_type=str))
        return dictionary.encode_line(pieces, add_if_not_exist=False, append_eos=False).numpy()

    return LanguageIdentifier.from_data(data_dir, dictionary), encode
