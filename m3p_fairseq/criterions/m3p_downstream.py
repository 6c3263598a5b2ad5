"""Losses of the understanding model's fine-tuning: retrieval (VLM BCE + the dual encoder's
contrastive loss) and sentence-pair classification (XNLI).

M3PModel returns a dict, so fairseq's ``sentence_prediction`` criterion (which unpacks a tuple)
cannot drive it; these read the dict. Metrics are flat sums so ``logging_outputs_can_be_summed``
stays True.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from ..errors import M3PInputError
from ..models.dual_encoder import contrastive_loss, embed_images, embed_text, has_dual_heads
from ..objectives import reduce_loss_and_accuracy, vlm_loss
from .summed import log_loss_bits, summer


@dataclass
class M3PRetrievalCriterionConfig(FairseqDataclass):
    contrastive_weight: float = field(default=1.0, metadata={
        "help": "weight of the dual encoder's in-batch contrastive loss (per pair, as the VLM loss); "
                "0 trains the cross-encoder alone"})
    temperature: float = field(default=0.05, metadata={"help": "softmax temperature of the contrastive loss"})
    hard_negatives: int = field(default=0, metadata={
        "help": "training negatives per positive mined in the batch by the dual encoder, on top of the task's "
                "--num-negatives random ones: half replace the image, half the text, each drawn from the "
                "softmax of the dual similarities (ALBEF's sampling); 0 (default): the paper's random negatives only"})


@register_criterion("m3p_retrieval", dataclass=M3PRetrievalCriterionConfig)
class M3PRetrievalCriterion(FairseqCriterion):
    """BCE of the VLM head over positives and sampled negatives, plus the dual encoder's InfoNCE.

    The loss is a sum over the batch's pairs (sample_size = pairs): the contrastive loss, computed
    once per positive, is scaled by pairs per positive so that ``contrastive_weight`` weighs it per
    pair, as the VLM term.

    The contrastive term also gets the cross-encoder going: fine-tuning m3p_tiny from a pre-training
    whose VLM head is still at chance (embedded world, batch 32, lr 5e-4), BCE alone kept predicting
    the 1:3 match rate for 400 updates, while with the contrastive term the VLM head left it after
    ~250 updates (measured; the dual encoder improves first, the cross-encoder follows).
    """

    def __init__(self, task, contrastive_weight=1.0, temperature=0.05, hard_negatives=0):
        super().__init__(task)
        if hard_negatives < 0:
            raise M3PInputError(f"--hard-negatives {hard_negatives}: must be >= 0")
        self.contrastive_weight, self.temperature, self.hard_negatives = contrastive_weight, temperature, hard_negatives
        self.bos = task.source_dictionary.bos()

    def forward(self, model, sample, reduce=True):
        net_input, labels = sample["net_input"], sample["vlm_target"]
        dual = sample.get("dual")
        mine = self.hard_negatives > 0 and model.training and dual is not None
        if mine and not has_dual_heads(model):
            raise M3PInputError("--hard-negatives needs the dual encoder's heads (--dual-dim > 0)")
        log, nce = {}, None
        if dual is not None and has_dual_heads(model) and (self.contrastive_weight > 0 or mine):
            idx = dual["pair_index"]
            text = embed_text(model, dual["src_tokens"])
            image = embed_images(model, net_input["regions"][idx], net_input["region_boxes"][idx],
                                 net_input["region_padding_mask"][idx], self.bos)
            if self.contrastive_weight > 0:
                nce, nce_correct = contrastive_loss(text, image, dual["image_rows"], self.temperature)
                log.update({"nce_loss": nce.data, "nce_n": len(idx), "nce_ncorrect": nce_correct})
            if mine:
                net_input, labels = self.add_hard_negatives(net_input, labels, idx, text.detach(), image.detach(),
                                                            dual["image_rows"])
        out = model(**net_input, vlm=True)
        loss = vlm_loss(out["vlm_logits"], labels)
        n = labels.numel()
        with torch.no_grad():
            ncorrect = ((out["vlm_logits"] > 0).float() == labels).sum()
        log.update({"vlm_loss": loss.data, "vlm_n": n, "vlm_ncorrect": ncorrect})
        if nce is not None:
            loss = loss + self.contrastive_weight * (n / len(dual["pair_index"])) * nce
        log.update({"loss": loss.data, "sample_size": n, "ntokens": sample["ntokens"], "nsentences": n})
        return loss, n, log

    def add_hard_negatives(self, net_input, labels, idx, text, image, rows):
        """The cross-encoder's batch plus mined negatives: for positive i, images j (and captions j) drawn
        with probability softmax(sim / T) over the batch's other images; a pair of the same image is never
        a negative. ``idx``: the positives' places in the batch; text/image: their dual embeddings."""
        sim = text @ image.t() / self.temperature  # caption i x image j
        other = rows[:, None] != rows[None, :]
        keep = other.any(dim=1)  # a positive whose batch holds no other image gets no mined negative
        if not bool(keep.any()):
            return net_input, labels
        n_image = (self.hard_negatives + 1) // 2
        n_text = self.hard_negatives - n_image
        pos = torch.nonzero(keep).squeeze(1)
        caption_side, image_side = [], []  # batch places of each new pair's text and regions
        for k, scores, replace_image in ((n_image, sim, True), (n_text, sim.t(), False)):
            if k == 0:
                continue
            # row p: the kept side is positive pos[p]; sample the replaced side among the other images
            w = torch.softmax(scores[pos].float().masked_fill(~other[pos], float("-inf")), dim=1)
            drawn = idx[torch.multinomial(w, k, replacement=True)].reshape(-1)
            kept = idx[pos].repeat_interleave(k)
            caption_side.append(kept if replace_image else drawn)
            image_side.append(drawn if replace_image else kept)
        t, r = torch.cat(caption_side), torch.cat(image_side)
        grown = dict(net_input)
        grown["src_tokens"] = torch.cat([net_input["src_tokens"], net_input["src_tokens"][t]])
        if "src_lengths" in net_input:
            grown["src_lengths"] = torch.cat([net_input["src_lengths"], net_input["src_lengths"][t]])
        for key in ("regions", "region_boxes", "region_padding_mask"):
            grown[key] = torch.cat([net_input[key], net_input[key][r]])
        return grown, torch.cat([labels, labels.new_zeros(len(t))])

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = summer(logging_outputs)
        log_loss_bits(total)
        reduce_loss_and_accuracy("vlm", total)
        reduce_loss_and_accuracy("nce", total)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


@dataclass
class M3PClassificationCriterionConfig(FairseqDataclass):
    classification_head_name: str = field(default="xnli", metadata={"help": "the model's classification head"})


@register_criterion("m3p_classification", dataclass=M3PClassificationCriterionConfig)
class M3PClassificationCriterion(FairseqCriterion):
    """Cross-entropy of a classification head over the [CLS] output (XNLI), with accuracy."""

    def __init__(self, task, classification_head_name="xnli"):
        super().__init__(task)
        self.head = classification_head_name

    def forward(self, model, sample, reduce=True):
        if self.head not in getattr(model, "classification_heads", {}):
            raise ValueError(f"the model has no classification head {self.head!r} (--classification-head-name)")
        logits = model(**sample["net_input"], classification_head_name=self.head)["classification"]
        target = sample["target"].view(-1)
        loss = F.cross_entropy(logits.float(), target, reduction="sum")
        n = target.numel()
        ncorrect = (logits.argmax(-1) == target).sum()
        return loss, n, {"loss": loss.data, "ntokens": sample["ntokens"], "nsentences": n, "sample_size": n,
                         "ncorrect": ncorrect}

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = summer(logging_outputs)
        n = log_loss_bits(total)
        if n > 0:
            metrics.log_scalar("accuracy", 100.0 * total("ncorrect") / n, n, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
