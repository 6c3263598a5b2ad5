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
from fairseq.criterions import FairseqCriterion, register_criterion

from ..objectives import IGLUELossConfig, iglue_loss
from .summed import ClassifierMetrics


@register_criterion("m3p_iglue", dataclass=IGLUELossConfig)
class IGLUECriterion(ClassifierMetrics, FairseqCriterion):
    """The loss maths live with the IGLUE objectives (objectives.py), which train the same heads beside others."""

    def __init__(self, task, classification_loss="ce"):
        super().__init__(task)
        self.classification_loss = classification_loss

    def forward(self, model, sample, reduce=True):
        loss, n, ncorrect = iglue_loss(model, self.task.head_name, sample, self.classification_loss)
        return loss, n, {"loss": loss.data, "ntokens": sample["ntokens"], "nsentences": n, "sample_size": n,
                         "ncorrect": ncorrect}
