"""Losses of the understanding objectives: xMLM / MMLM (masked LM), MRM (MSE + CE), VLM (BCE).

Each batch carries one objective (``sample["objective"]``). Logged metrics are flat sums with the
objective as prefix (xmlm_loss, mmlm_loss, mrm_mse, mrm_ce, vlm_loss, vlm_acc, with their counts),
so ``logging_outputs_can_be_summed`` stays True across workers.
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import metrics, modules, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from omegaconf import II

from .summed import log_loss_and_accuracy, log_loss_bits, summer

OBJECTIVES = ("xmlm", "mmlm", "mrm", "vlm")


def masked_lm_loss(logits, targets, pad_idx):
    """Summed cross-entropy over the masked positions."""
    return modules.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), reduction="sum",
                                 ignore_index=pad_idx)


def mrm_losses(pred_feat, pred_cls, feat_target, cls_target):
    """The paper's MRM: MSE(FC(h), raw feature) (mean over feature dims, summed over regions)
    and CE(FC(h), the detector's top-1 class), both summed over masked regions."""
    mse = F.mse_loss(pred_feat.float(), feat_target.float(), reduction="none").mean(-1).sum()
    ce = F.cross_entropy(pred_cls.float(), cls_target, reduction="sum")
    return mse, ce


def vlm_loss(logits, labels):
    """Binary cross-entropy of match / no match, summed."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum")


@dataclass
class M3PPretrainCriterionConfig(FairseqDataclass):
    mrm_feat_weight: float = field(default=1.0, metadata={"help": "weight of MRM's regression term"})
    mrm_cls_weight: float = field(default=1.0, metadata={"help": "weight of MRM's classification term"})
    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion("m3p_pretrain", dataclass=M3PPretrainCriterionConfig)
class M3PPretrainCriterion(FairseqCriterion):
    def __init__(self, task, mrm_feat_weight=1.0, mrm_cls_weight=1.0, sentence_avg=False):
        super().__init__(task)
        self.mrm_feat_weight, self.mrm_cls_weight = mrm_feat_weight, mrm_cls_weight
        self.pad_idx = task.source_dictionary.pad()

    def forward(self, model, sample, reduce=True):
        objective = sample["objective"]
        net_input = sample["net_input"]
        # every objective's count first, always present and in the same order (fairseq sums logs across workers
        # by position): per update they show which objective(s) all micro-batches of all workers trained
        log = {f"{o}_batches": int(o == objective) for o in OBJECTIVES}
        log.update({"ntokens": sample["ntokens"], "nsentences": sample["nsentences"]})
        if objective in ("xmlm", "mmlm"):
            masked = sample["target"].ne(self.pad_idx)
            n = int(masked.sum())
            if n == 0:  # keep every parameter in the graph: fairseq's dummy batches and DDP need it
                masked = None
            out = model(**net_input, masked_tokens=masked)
            if masked is None:
                loss = out["features"].sum() * 0.0
            else:
                loss = masked_lm_loss(out["lm_logits"], sample["target"][masked], self.pad_idx)
            sample_size = n
            log.update({f"{objective}_loss": loss.data, f"{objective}_n": n})
        elif objective == "mrm":
            masked = sample["masked_regions"]
            n = int(masked.sum())
            out = model(**net_input, masked_regions=masked)
            mse, ce = mrm_losses(out["mrm_feat"], out["mrm_cls"], sample["mrm_feat_target"], sample["mrm_cls_target"])
            loss = self.mrm_feat_weight * mse + self.mrm_cls_weight * ce
            if n == 0:
                loss = loss + out["features"].sum() * 0.0
            sample_size = n
            with torch.no_grad():
                ncorrect = int((out["mrm_cls"].argmax(-1) == sample["mrm_cls_target"]).sum()) if n else 0
            log.update({"mrm_loss": loss.data, "mrm_mse": mse.data, "mrm_ce": ce.data, "mrm_n": n,
                        "mrm_ncorrect": ncorrect})
        elif objective == "vlm":
            out = model(**net_input, vlm=True)
            labels = sample["vlm_target"]
            loss = vlm_loss(out["vlm_logits"], labels)
            sample_size = labels.numel()
            with torch.no_grad():
                ncorrect = int(((out["vlm_logits"] > 0).float() == labels).sum())
            log.update({"vlm_loss": loss.data, "vlm_n": sample_size, "vlm_ncorrect": ncorrect})
        else:
            raise ValueError(f"unknown objective {objective!r} in batch")
        log.update({"loss": loss.data, "sample_size": sample_size})
        return loss, sample_size, log

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = summer(logging_outputs)
        for obj in OBJECTIVES:
            if total(f"{obj}_batches") > 0:
                metrics.log_scalar_sum(f"{obj}_batches", total(f"{obj}_batches"))
        log_loss_bits(total)
        for obj in ("xmlm", "mmlm"):
            n = total(f"{obj}_n")
            if n > 0:
                metrics.log_scalar(f"{obj}_loss", total(f"{obj}_loss") / n / math.log(2), n, round=3)
                metrics.log_derived(f"{obj}_ppl", lambda m, o=obj: utils.get_perplexity(m[f"{o}_loss"].avg))
        n = total("mrm_n")
        if n > 0:
            metrics.log_scalar("mrm_mse", total("mrm_mse") / n, n, round=4)
            metrics.log_scalar("mrm_ce", total("mrm_ce") / n, n, round=3)
            metrics.log_scalar("mrm_acc", 100.0 * total("mrm_ncorrect") / n, n, round=2)
        log_loss_and_accuracy(total, "vlm")

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
