"""Losses of the understanding model's fine-tuning: retrieval (VLM BCE + the dual encoder's
contrastive loss) and sentence-pair classification (XNLI).

M3PModel returns a dict, so fairseq's ``sentence_prediction`` criterion (which unpacks a tuple)
cannot drive it; these read the dict. Metrics are flat sums so ``logging_outputs_can_be_summed``
stays True.
"""
from dataclasses import dataclass, field

import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from ..objectives import RetrievalLoss, RetrievalLossConfig, reduce_retrieval
from .summed import ClassifierMetrics, log_loss_bits, summer


@register_criterion("m3p_retrieval", dataclass=RetrievalLossConfig)
class M3PRetrievalCriterion(RetrievalLoss, FairseqCriterion):
    """Retrieval fine-tuning: the VLM head's BCE over positives and sampled negatives plus the dual
    encoder's InfoNCE (objectives.RetrievalLoss, which m3p_pretrain's ``ret`` batches share)."""

    def __init__(self, task, contrastive_weight=1.0, temperature=0.05, hard_negatives=0):
        super().__init__(task)
        self.init_retrieval_loss(contrastive_weight, temperature, hard_negatives)

    def forward(self, model, sample, reduce=True):
        loss, n, log = self.retrieval_step(model, sample)
        log.update({"loss": loss.data, "sample_size": n, "ntokens": sample["ntokens"], "nsentences": n})
        return loss, n, log

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = summer(logging_outputs)
        log_loss_bits(total)
        reduce_retrieval("", total)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


@dataclass
class M3PClassificationCriterionConfig(FairseqDataclass):
    classification_head_name: str = field(default="xnli", metadata={"help": "the model's classification head"})


@register_criterion("m3p_classification", dataclass=M3PClassificationCriterionConfig)
class M3PClassificationCriterion(ClassifierMetrics, FairseqCriterion):
    """Cross-entropy of a classification head over the [CLS] output (XNLI), with accuracy."""

    def __init__(self, task, classification_head_name="xnli"):
        super().__init__(task)
        self.head = classification_head_name

    def forward(self, model, sample, reduce=True):
        if self.head not in getattr(model, "classification_heads", {}):
            raise ValueError(f"the model has no classification head {self.head!r} (--classification-head-name)")
        out = model(**sample["net_input"], classification_head_name=self.head, read_only=True)
        logits = out["classification"]
        target = sample["target"].view(-1)
        loss = F.cross_entropy(logits.float(), target, reduction="sum")
        n = target.numel()
        ncorrect = (logits.argmax(-1) == target).sum()
        return loss, n, {"loss": loss.data, "ntokens": sample["ntokens"], "nsentences": n, "sample_size": n,
                         "ncorrect": ncorrect}
