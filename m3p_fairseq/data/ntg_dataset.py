"""News title generation (XGLUE NTG) items, as ``m3p-import-dataset ntg`` writes them: the one reader of the
m3p_ntg task and of the ``ntg`` objective (English fine-tuning with xDAE kept on).

    DATA/ntg/{lang}/src/{split}.{bin,idx}   news bodies
    DATA/ntg/{lang}/tgt/{split}.{bin,idx}   their titles

The body is cut to --tokens-per-sample and the title to --max-title-tokens; source and target carry the
same language id (the paper feeds the target language to encoder and decoder).
"""
import os
from dataclasses import dataclass, field

import numpy as np
from fairseq.data import AppendTokenDataset, ConcatDataset, PrependTokenDataset, StripTokenDataset, TruncateDataset
from fairseq.dataclass import FairseqDataclass

from ..errors import M3PDataError
from .text_generation_dataset import TextGenerationDataset


@dataclass
class NTGDataConfig(FairseqDataclass):
    max_title_tokens: int = field(default=64, metadata={"help": "NTG titles are cut to this many tokens"})


def ntg_language(task, lang, split):
    """(bodies ``<s> ... </s>``, titles ``... </s>``, language ids) of one language."""
    folder = os.path.join(task.data_path(), "ntg", lang)
    if not os.path.isdir(folder):
        raise M3PDataError(f"{folder}: no NTG data for language {lang!r}")
    body = task.load_tokens(os.path.join(folder, "src", split), f"{lang} {split} news bodies")
    title = task.load_tokens(os.path.join(folder, "tgt", split), f"{lang} {split} titles")
    if len(body) != len(title):
        raise M3PDataError(f"{os.path.join(folder, 'tgt', split)}.bin: {len(title)} titles for {len(body)} "
                           f"news bodies in {os.path.join(folder, 'src', split)}.bin")
    eos, bos = task.dictionary.eos(), task.dictionary.bos()
    # cut the text, not its </s>: strip it, truncate, put it back (then <s> in front of the body)
    body = PrependTokenDataset(AppendTokenDataset(TruncateDataset(
        StripTokenDataset(body, eos), task.cfg.tokens_per_sample - 2), eos), bos)
    title = AppendTokenDataset(TruncateDataset(StripTokenDataset(title, eos), task.cfg.max_title_tokens - 1), eos)
    return body, title, np.full(len(body), task.lang_id(lang))


def ntg_dataset(task, split, langs, seed=1):
    """The (body -> title) items of ``langs``, concatenated; English training items code-switched with
    --code-switch (body and title together: the multimodal code-switching of the paper's later version, here
    on text)."""
    parts = [ntg_language(task, lang, split) for lang in langs]
    concat = (lambda ds: ConcatDataset(ds) if len(ds) > 1 else ds[0])
    ids = np.concatenate([p[2] for p in parts])
    items = TextGenerationDataset(concat([p[0] for p in parts]), concat([p[1] for p in parts]), ids, ids,
                                  task.dictionary)
    return task.code_switched_pairs(items, split, seed)
