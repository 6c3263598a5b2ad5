"""News title generation (XGLUE NTG) with M3P's generation model: news body -> title, text only.

    fairseq-train DATA --user-dir m3p_fairseq --task m3p_ntg --criterion m3p_generation \\
        --arch m3p_seq2seq_base --pretrained-checkpoint m3p-gen.pt --train-langs en ...
    fairseq-generate DATA --user-dir m3p_fairseq --task m3p_ntg --path checkpoint_best.pt \\
        --gen-subset test.de --beam 10 --post-process sentencepiece

Reads ``ntg/{lang}/{src,tgt}/{split}`` as ``m3p-import-dataset ntg`` writes them. The paper
fine-tunes on English (XGLUE has English training data only) and tests every language; the body
is cut to --tokens-per-sample, source and target carry the same language id.
"""
import logging
import os
from dataclasses import dataclass, field

import numpy as np
from fairseq.data import AppendTokenDataset, ConcatDataset, PrependTokenDataset, StripTokenDataset, TruncateDataset
from fairseq.tasks import register_task

from ..data.text_generation_dataset import TextGenerationDataset
from ..checkpoints import GENERATION
from ..errors import M3PDataError
from ..evaluation.validation import GenerationValidConfig
from ..utils import split_list
from .base import M3PDataConfig, M3PTaskBase, PretrainedConfig, split_and_langs

logger = logging.getLogger(__name__)


@dataclass
class M3PNTGConfig(M3PDataConfig, PretrainedConfig, GenerationValidConfig):
    train_langs: str = field(default="en", metadata={"help": "languages to fine-tune on (paper: en)"})
    eval_langs: str = field(default="", metadata={
        "help": "languages of the valid/test splits (default: every language under DATA/ntg)"})
    max_title_tokens: int = field(default=64, metadata={"help": "titles are cut to this many tokens"})


@register_task("m3p_ntg", dataclass=M3PNTGConfig)
class M3PNTGTask(M3PTaskBase):
    model_kind = GENERATION

    def criterions(self):
        return ("m3p_generation",)

    def eval_langs(self):
        return self.folder_langs(self.cfg.eval_langs, "ntg", "NTG data")

    def language(self, lang, split):
        folder = os.path.join(self.data_path(), "ntg", lang)
        if not os.path.isdir(folder):
            raise M3PDataError(f"{folder}: no NTG data for language {lang!r}")
        body = self.load_tokens(os.path.join(folder, "src", split), f"{lang} {split} news bodies")
        title = self.load_tokens(os.path.join(folder, "tgt", split), f"{lang} {split} titles")
        if len(body) != len(title):
            raise M3PDataError(f"{os.path.join(folder, 'tgt', split)}.bin: {len(title)} titles for {len(body)} "
                               f"news bodies in {os.path.join(folder, 'src', split)}.bin")
        eos, bos = self.dictionary.eos(), self.dictionary.bos()
        # cut the text, not its </s>: strip it, truncate, put it back (then <s> in front of the body)
        body = PrependTokenDataset(AppendTokenDataset(TruncateDataset(
            StripTokenDataset(body, eos), self.cfg.tokens_per_sample - 2), eos), bos)
        title = AppendTokenDataset(TruncateDataset(StripTokenDataset(title, eos), self.cfg.max_title_tokens - 1), eos)
        return body, title, np.full(len(body), self.lang_id(lang))

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        base = split.split(".", 1)[0]
        default = split_list(self.cfg.train_langs) if base == "train" else self.eval_langs()
        base, langs = split_and_langs(split, default)
        parts = [self.language(lang, base) for lang in langs]
        concat = (lambda ds: ConcatDataset(ds) if len(ds) > 1 else ds[0])
        ids = np.concatenate([p[2] for p in parts])
        self.datasets[split] = TextGenerationDataset(concat([p[0] for p in parts]), concat([p[1] for p in parts]),
                                                     ids, ids, self.dictionary)
        logger.info(f"{split}: {len(self.datasets[split])} items ({','.join(langs)})")
