"""The generation model's criterion: token cross-entropy under teacher forcing, for the generation
objectives (xDAE, IC, DIC; their specs in objectives.py) and the generation fine-tuning tasks
(captioning, MMT, NTG), whose batches carry no objective.

Every batch decodes a target sentence, so one loss serves all: fairseq's ``label_smoothed_nll_loss``
over the target tokens. Metrics are flat sums, also prefixed by a pre-training batch's objective
(``xdae_loss``, ``ic_acc``, ...), so ``logging_outputs_can_be_summed`` stays True and each
objective's loss (bits per token), perplexity and accuracy show separately.
"""
from dataclasses import dataclass, field

from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from omegaconf import II

from ..checkpoints import GENERATION
from ..errors import M3PInputError
from ..objectives import OBJECTIVES, generation_step, log_token_metrics, of_kind
from .summed import log_loss_bits, summer


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
        name = sample.get("objective")
        if name is not None and (name not in OBJECTIVES or OBJECTIVES[name].kind != GENERATION):
            raise M3PInputError(f"m3p_generation got a {name!r} batch; it trains {', '.join(of_kind(GENERATION))} "
                                f"(use --criterion m3p_pretrain for understanding objectives)")
        loss, sample_size, log = (OBJECTIVES[name].loss if name else generation_step)(self, model, sample)
        log.update({"loss": loss.data, "ntokens": sample["ntokens"], "nsentences": sample["nsentences"],
                    "sample_size": sample_size})
        return loss, sample_size, log

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = summer(logging_outputs)
        log_loss_bits(total)
        log_token_metrics(total, "", "ntokens", "nll_loss", loss_out="nll_loss")
        for name in of_kind(GENERATION):
            OBJECTIVES[name].reduce(name, total)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
