"""The batch layout of a text-only task, as fairseq's masked_lm and sentence_prediction tasks build it."""
from fairseq.data import IdDataset, NestedDictionaryDataset, NumelDataset, NumSamplesDataset, RightPadDataset


def text_items(src, target, pad, **net_input):
    """``{id, net_input: {src_tokens, src_lengths, **net_input}, target, nsentences, ntokens}`` over the token
    dataset ``src``; ``target`` is a dataset of the same length (tokens to predict, or labels)."""
    return NestedDictionaryDataset(
        {
            "id": IdDataset(),
            "net_input": {"src_tokens": RightPadDataset(src, pad_idx=pad), "src_lengths": NumelDataset(src, reduce=False),
                          **net_input},
            "target": target,
            "nsentences": NumSamplesDataset(),
            "ntokens": NumelDataset(src, reduce=True),
        },
        sizes=[src.sizes],
    )
