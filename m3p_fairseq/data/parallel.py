"""Translation pairs for the text-side alignment objectives (TLM and the translation contrastive objective).

TLM (XLM's translation language modeling) reads a pair as one sequence, ``<s> src </s></s> tgt </s>``
(XLM-R's layout for two sentences), masked as xMLM, with positions restarting at the second
sentence and each token's language, as XLM gives them: ``PairSegmentsDataset`` derives both from the
unmasked pair (the second sentence starts at the first ``</s></s>``). fairseq's datasets do the rest
(concatenation, masking, padding); what is written here is only that per-token bookkeeping.
"""
import numpy as np
import torch
from fairseq.data import BaseWrapperDataset


def second_sentence_start(tokens, eos):
    """Index where the second sentence of ``<s> a </s></s> b </s>`` starts (its leading ``</s>``)."""
    t = tokens.numpy() if torch.is_tensor(tokens) else np.asarray(tokens)
    both = np.nonzero((t[:-1] == eos) & (t[1:] == eos))[0]
    if not len(both):
        raise ValueError("not a sentence pair: no </s></s> between the sentences")
    return int(both[0]) + 1


class PairSegmentsDataset(BaseWrapperDataset):
    """Per token of each unmasked pair: its position (``field="positions"``: fairseq's numbering,
    pad + 1 for the first token of each sentence) or its language id (``field="langs"``)."""

    def __init__(self, pairs, eos, pad, first_langs=None, second_langs=None, field="positions"):
        super().__init__(pairs)
        if field not in ("positions", "langs"):
            raise ValueError(f"field {field!r}: positions or langs")
        if field == "langs" and (first_langs is None or second_langs is None):
            raise ValueError("langs needs the language of both sentences of every pair")
        self.eos, self.pad, self.field = eos, pad, field
        self.first_langs, self.second_langs = first_langs, second_langs

    def __getitem__(self, index):
        tokens = self.dataset[index]
        cut = second_sentence_start(tokens, self.eos)
        n = len(tokens)
        if self.field == "positions":
            return torch.cat([torch.arange(cut), torch.arange(n - cut)]) + self.pad + 1
        return torch.cat([torch.full((cut,), int(self.first_langs[index])),
                          torch.full((n - cut,), int(self.second_langs[index]))])
