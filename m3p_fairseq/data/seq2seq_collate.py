"""Batches for the encoder-decoder: fairseq's translation layout plus regions and language ids.

``target`` is ``y1 ... yn </s>`` and ``prev_output_tokens`` is ``</s> y1 ... yn`` (teacher
forcing, and the start symbol fairseq's SequenceGenerator uses). A source that is regions only
has a B x 0 ``src_tokens``.
"""
import torch
from fairseq.data import data_utils

from .region_dataset import collate_regions


def collate_seq2seq(samples, pad_idx, eos_idx):
    """samples: dicts with ``id``, ``target``, ``src_lang``, ``tgt_lang`` and a ``source`` (tokens)
    and/or an ``image`` (region dict)."""
    if len(samples) == 0:
        return {}
    bsz = len(samples)
    if samples[0].get("source") is not None:
        src_tokens = data_utils.collate_tokens([s["source"] for s in samples], pad_idx, left_pad=False)
        src_lengths = torch.LongTensor([len(s["source"]) for s in samples])
    else:
        src_tokens = torch.zeros(bsz, 0, dtype=torch.long)
        src_lengths = torch.zeros(bsz, dtype=torch.long)
    targets = [s["target"] for s in samples]
    net_input = {
        "src_tokens": src_tokens,
        "src_lengths": src_lengths,
        "prev_output_tokens": data_utils.collate_tokens(targets, pad_idx, eos_idx, left_pad=False,
                                                        move_eos_to_beginning=True),
        "src_lang": torch.LongTensor([s["src_lang"] for s in samples]),
        "tgt_lang": torch.LongTensor([s["tgt_lang"] for s in samples]),
    }
    if samples[0].get("image") is not None:
        regions = collate_regions([s["image"] for s in samples])
        net_input.update(regions=regions["regions"], region_boxes=regions["region_boxes"],
                         region_padding_mask=regions["region_padding_mask"])
    return {
        "id": torch.LongTensor([s["id"] for s in samples]),
        "nsentences": bsz,
        "ntokens": int(sum(len(t) for t in targets)),
        "net_input": net_input,
        "target": data_utils.collate_tokens(targets, pad_idx, eos_idx, left_pad=False),
    }
