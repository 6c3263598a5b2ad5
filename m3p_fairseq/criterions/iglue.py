"""The loss and accuracy of IGLUE's understanding tasks (tasks/iglue.py): one criterion for the three
heads, the target's kind choosing the loss.

* Soft answer scores (xGQA): binary cross-entropy with logits against each answer's score, summed
  over the answer vocabulary: volta's ``BCEWithLogitsLoss`` mean times the number of answers.
  Accuracy: the score of the arg-max answer (volta's ``compute_score_with_logits``); with GQA's one
  answer per question, exact match.
* One class per example (XVNLI, MaRVL): softmax cross-entropy by default. The classes exclude each
  other and each example has exactly one, which is what a softmax models; volta's recipe, binary
  cross-entropy against the one-hot target averaged over the classes, scores each class as an
  independent yes/no and gives every logit 1/C of the gradient; ``--classification-loss bce``
  reproduces it. Accuracy: the arg-max class is the gold one.

Logged the fairseq way (``sentence_prediction``'s): ``ncorrect`` and ``nsentences`` summed, ``accuracy``
derived in ``reduce_metrics``, so ``--best-checkpoint-metric accuracy --maximize-best-checkpoint-metric``
picks checkpoints on a validation split.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from ..errors import M3PInputError
from .summed import ClassifierMetrics

CLASSIFICATION_LOSSES = ChoiceEnum(["ce", "bce"])


def soft_score_loss(logits, scores):
    """Summed BCE-with-logits of B x A logits against B x A answer scores (nats)."""
    return F.binary_cross_entropy_with_logits(logits.float(), scores.float(), reduction="sum")


def class_loss(logits, target, kind="ce"):
    """Summed loss of B x C logits against B class indices: softmax cross-entropy (``ce``) or, as volta,
    BCE-with-logits against the one-hot target averaged over the C classes (``bce``), in nats."""
    if kind == "ce":
        return F.cross_entropy(logits.float(), target, reduction="sum")
    one_hot = F.one_hot(target, logits.size(-1)).float()
    return F.binary_cross_entropy_with_logits(logits.float(), one_hot, reduction="none").mean(-1).sum()


def num_correct(logits, target):
    """Correct examples of a batch: the arg-max class equals the gold one; for soft answer scores, the
    score of the arg-max answer (exact match when each question has one answer)."""
    pred = logits.argmax(-1)
    if target.dim() == 2:
        return target.gather(1, pred.unsqueeze(1)).sum()
    return (pred == target).sum()


def iglue_logits(model, task, net_input):
    """B x C logits of the task's head (its rows pooled and, for two images, paired)."""
    heads = getattr(model, "classification_heads", {})
    if task.head_name not in heads:
        raise M3PInputError(f"the model has no {task.head_name} head: fine-tune it with --task m3p_{task.name}")
    return model(**net_input, classification_head_name=task.head_name, read_only=True)["classification"]


@dataclass
class IGLUECriterionConfig(FairseqDataclass):
    classification_loss: CLASSIFICATION_LOSSES = field(default="ce", metadata={
        "help": "XVNLI / MaRVL loss: ce (softmax cross-entropy) or bce (volta's: BCE against the one-hot target, "
                "mean over classes); xGQA always uses BCE on its soft answer scores"})


@register_criterion("m3p_iglue", dataclass=IGLUECriterionConfig)
class IGLUECriterion(ClassifierMetrics, FairseqCriterion):
    def __init__(self, task, classification_loss="ce"):
        super().__init__(task)
        self.classification_loss = classification_loss

    def forward(self, model, sample, reduce=True):
        logits = iglue_logits(model, self.task, sample["net_input"])
        target = sample["target"]
        if target.dim() == 2:
            loss = soft_score_loss(logits, target)
        else:
            loss = class_loss(logits, target, self.classification_loss)
        n = target.size(0)
        with torch.no_grad():
            ncorrect = num_correct(logits, target)
        return loss, n, {"loss": loss.data, "ntokens": sample["ntokens"], "nsentences": n, "sample_size": n,
                         "ncorrect": ncorrect}
