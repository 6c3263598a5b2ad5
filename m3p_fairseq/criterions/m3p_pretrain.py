"""The understanding objectives' criterion: each batch carries one objective (``sample["objective"]``),
whose loss and metrics come from its spec in objectives.py (xMLM / MMLM / TLM masked LM, MRM MSE + CE,
VLM BCE, TCL contrastive; RET, retrieval fine-tuning as an objective, m3p_retrieval's loss; the IGLUE jobs
xvnli, xgqa, marvl as objectives, m3p_iglue's loss).

Logged metrics are flat sums with the objective as prefix (xmlm_loss, mmlm_loss, mrm_mse, mrm_ce,
vlm_loss, vlm_acc, with their counts), so ``logging_outputs_can_be_summed`` stays True across
workers; cross-entropies are in bits, ``mrm_mse`` is a squared error. Counts stay tensors until
fairseq reduces them: no host sync per batch.
"""
from dataclasses import dataclass, field

from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from omegaconf import II

from ..checkpoints import UNDERSTANDING
from ..errors import M3PInputError
from ..objectives import (OBJECTIVES, IGLUELossConfig, RetrievalLoss, RetrievalLossConfig, masked_lm_loss,  # noqa: F401
                          mrm_losses, of_kind, vlm_loss)  # (losses live with their objectives)
from .summed import log_loss_bits, summer


@dataclass
class M3PPretrainCriterionConfig(RetrievalLossConfig, IGLUELossConfig):
    mrm_feat_weight: float = field(default=1.0, metadata={"help": "weight of MRM's regression term"})
    mrm_cls_weight: float = field(default=1.0, metadata={"help": "weight of MRM's classification term"})
    tcl_temperature: float = field(default=0.05, metadata={
        "help": "softmax temperature of the translation contrastive objective (tcl)"})
    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion("m3p_pretrain", dataclass=M3PPretrainCriterionConfig)
class M3PPretrainCriterion(RetrievalLoss, FairseqCriterion):
    def __init__(self, task, mrm_feat_weight=1.0, mrm_cls_weight=1.0, tcl_temperature=0.05, contrastive_weight=1.0,
                 temperature=0.05, hard_negatives=0, classification_loss="ce", sentence_avg=False):
        super().__init__(task)
        self.init_retrieval_loss(contrastive_weight, temperature, hard_negatives)  # (ret batches)
        self.classification_loss = classification_loss  # (xvnli, marvl batches)
        self.mrm_feat_weight, self.mrm_cls_weight, self.tcl_temperature = mrm_feat_weight, mrm_cls_weight, tcl_temperature
        self.pad_idx = task.source_dictionary.pad()

    def forward(self, model, sample, reduce=True):
        name = sample["objective"]
        spec = OBJECTIVES.get(name)
        if spec is None or spec.kind != UNDERSTANDING:
            raise M3PInputError(f"m3p_pretrain got a {name!r} batch; it trains {', '.join(of_kind(UNDERSTANDING))}")
        # every objective's count first, always present and in the same order (fairseq sums logs across workers
        # by position): per update they show which objective(s) all micro-batches of all workers trained
        log = {f"{o}_batches": int(o == name) for o in of_kind(UNDERSTANDING)}
        log.update({"ntokens": sample["ntokens"], "nsentences": sample["nsentences"]})
        loss, sample_size, own = spec.loss(self, model, sample)
        log.update(own)
        log.update({"loss": loss.data, "sample_size": sample_size})
        return loss, sample_size, log

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = summer(logging_outputs)
        for name in of_kind(UNDERSTANDING):
            if total(f"{name}_batches") > 0:
                metrics.log_scalar_sum(f"{name}_batches", total(f"{name}_batches"))
        log_loss_bits(total)
        for name in of_kind(UNDERSTANDING):
            OBJECTIVES[name].reduce(name, total)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
