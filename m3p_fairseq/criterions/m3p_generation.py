"""Loss of the generation objectives (xDAE, IC, DIC) and of caption fine-tuning: token cross-entropy.

Every objective decodes a target sentence with teacher forcing, so one loss serves all: fairseq's
``label_smoothed_nll_loss`` over the target tokens. Metrics are flat sums, also prefixed by the
batch's objective (``xdae_nll_loss``, ``ic_ntokens``, ...), so ``logging_outputs_can_be_summed``
stays True and each objective's perplexity and accuracy show separately.
"""
import math
from dataclasses import dataclass, field

import torch
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
from fairseq.dataclass import FairseqDataclass
from omegaconf import II

from .summed import log_loss_bits, summer

OBJECTIVES = ("xdae", "ic", "dic", "caption")


def generation_loss(lprobs, target, epsilon, pad_idx):
    """Summed label-smoothed NLL over non-pad target tokens: (loss, nll_loss, ncorrect)."""
    lprobs, target = lprobs.view(-1, lprobs.size(-1)), target.view(-1)
    loss, nll_loss = label_smoothed_nll_loss(lprobs, target, epsilon, ignore_index=pad_idx, reduce=True)
    with torch.no_grad():
        keep = target.ne(pad_idx)
        ncorrect = int((lprobs.argmax(-1)[keep] == target[keep]).sum())
    return loss, nll_loss, ncorrect


@dataclass
class M3PGenerationCriterionConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.0, metadata={
        "help": "epsilon of label smoothing (the paper does not say; 0 = plain cross-entropy)"})
    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion("m3p_generation", dataclass=M3PGenerationCriterionConfig)
class M3PGenerationCriterion(FairseqCriterion):
    def __init__(self, task, label_smoothing=0.0, sentence_avg=False):
        super().__init__(task)
        self.eps, self.sentence_avg = label_smoothing, sentence_avg
        self.pad_idx = task.target_dictionary.pad()

    def forward(self, model, sample, reduce=True):
        # batches of the captioning task carry no objective tag: they are captions
        objective = sample.get("objective", "caption")
        if objective not in OBJECTIVES:
            raise ValueError(f"m3p_generation got a {objective!r} batch; it scores {', '.join(OBJECTIVES[:3])} "
                             f"(use --criterion m3p_pretrain for understanding objectives)")
        net_output = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        target = model.get_targets(sample, net_output)
        loss, nll_loss, ncorrect = generation_loss(lprobs, target, self.eps, self.pad_idx)
        ntokens = sample["ntokens"]
        sample_size = sample["nsentences"] if self.sentence_avg else ntokens
        log = {"loss": loss.data, "nll_loss": nll_loss.data, "ntokens": ntokens, "nsentences": sample["nsentences"],
               "sample_size": sample_size, "ncorrect": ncorrect,
               f"{objective}_loss": loss.data, f"{objective}_nll_loss": nll_loss.data,
               f"{objective}_ntokens": ntokens, f"{objective}_ncorrect": ncorrect}
        return loss, sample_size, log

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = summer(logging_outputs)
        log_loss_bits(total)
        ntokens = total("ntokens")
        if ntokens > 0:
            metrics.log_scalar("nll_loss", total("nll_loss") / ntokens / math.log(2), ntokens, round=3)
            metrics.log_derived("ppl", lambda m: utils.get_perplexity(m["nll_loss"].avg))
            metrics.log_scalar("acc", 100.0 * total("ncorrect") / ntokens, ntokens, round=2)
        for obj in OBJECTIVES:
            n = total(f"{obj}_ntokens")
            if n > 0:
                metrics.log_scalar(f"{obj}_loss", total(f"{obj}_nll_loss") / n / math.log(2), n, round=3)
                metrics.log_derived(f"{obj}_ppl", lambda m, o=obj: utils.get_perplexity(m[f"{o}_loss"].avg))
                metrics.log_scalar(f"{obj}_acc", 100.0 * total(f"{obj}_ncorrect") / n, n, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
