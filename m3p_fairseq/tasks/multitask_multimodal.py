"""Pre-training task of M3P: one objective per update, from the objective registry (objectives.py).

Understanding objectives (xMLM, MMLM, MRM, VLM) train the understanding model, generation objectives
(xDAE, IC, DIC) the generation model; a run trains one of them. Each objective's dataset is built
from its spec and resampled to its share of the updates (--objective-ratios, else its natural size);
the batch iterator keeps every worker and every --update-freq micro-batch of an update on one objective.
The data layout is the one tasks/base.py describes.
"""
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import register_task
from omegaconf import II

from .. import checkpoints
from ..data.code_switch import CodeSwitchConfig
from ..data.multitask import MultitaskDataset
from ..data.ntg_dataset import NTGDataConfig
from ..data.retrieval_dataset import RetrievalDataConfig
from ..errors import M3PDataError
from ..evaluation.validation import QUERIES, RetrievalRecall, RetrievalValidConfig, retrieval_langs
from ..objectives import OBJECTIVES, stream_seed
from ..utils import split_list
from .base import FinetuneLangsConfig, M3PDataConfig, M3PTaskBase

logger = logging.getLogger(__name__)


@dataclass
class GenerationObjectivesConfig(FairseqDataclass):
    """Noise of xDAE and DIC (paper values as defaults)."""

    xdae_shuffle_distance: float = field(default=3.0, metadata={
        "help": "xDAE: k of the U(0, k) noise added to word positions before reordering (0: no shuffle)"})
    xdae_drop_prob: float = field(default=0.3, metadata={"help": "xDAE: probability of dropping each word"})
    xdae_mask_ratio: float = field(default=0.3, metadata={
        "help": "xDAE: share of words inside <mask> spans on average (the paper gives none; BART's 0.3)"})
    xdae_poisson_lambda: float = field(default=3.0, metadata={"help": "xDAE: mean span length (Poisson)"})
    dic_mask_ratio: float = field(default=0.3, metadata={
        "help": "DIC: share of regions inside zeroed spans on average (the paper gives none; xDAE's 0.3)"})
    dic_poisson_lambda: float = field(default=3.0, metadata={"help": "DIC: mean span length in regions (Poisson)"})


@dataclass
class MultitaskMultimodalConfig(M3PDataConfig, GenerationObjectivesConfig, CodeSwitchConfig, RetrievalDataConfig,
                                FinetuneLangsConfig, NTGDataConfig, RetrievalValidConfig):
    objectives: str = field(default="xmlm,mmlm,mrm,vlm", metadata={
        "help": "comma-separated objectives among " + ", ".join(OBJECTIVES) + " (understanding and generation "
                "objectives train different models: one kind per run)"})
    objective_ratios: str = field(default="", metadata={
        "help": "comma-separated share of updates per objective (same order); empty: each objective's natural size"})
    text_langs: str = field(default="", metadata={"help": "languages of the text corpus (default: every folder in DATA/text)"})
    parallel_pairs: str = field(default="", metadata={
        "help": "language pairs of the parallel text for TLM and TCL, e.g. en-de,en-fr (default: every folder in "
                "DATA/parallel)"})
    tcl_dim: int = field(default=128, metadata={"help": "size of the TCL head's sentence embeddings"})
    alpha: float = field(default=0.3, metadata={"help": "language sampling exponent for xMLM and xDAE (paper: 0.3)"})
    sample_break_mode: ChoiceEnum(["none", "complete", "complete_doc", "eos"]) = field(
        default="complete", metadata={"help": "how xMLM text is cut into samples (fairseq TokenBlockDataset)"})
    mask_prob: float = field(default=0.15, metadata={"help": "share of tokens masked (xMLM, MMLM)"})
    leave_unmasked_prob: float = field(default=0.1, metadata={"help": "masked tokens left unchanged"})
    random_token_prob: float = field(default=0.1, metadata={"help": "masked tokens replaced by a random token"})
    mrm_prob: float = field(default=0.15, metadata={"help": "share of regions masked (MRM)"})
    mrm_zero_prob: float = field(default=0.9, metadata={"help": "masked regions whose input is zeroed (else kept)"})
    vlm_negative_prob: float = field(default=0.5, metadata={"help": "share of VLM pairs made negative"})
    vlm_text_negative_prob: float = field(default=0.5, metadata={
        "help": "share of negatives that replace the text (the rest replace the image)"})
    update_freq: List[int] = II("optimization.update_freq")


@register_task("multitask_multimodal", dataclass=MultitaskMultimodalConfig)
class MultitaskMultimodalTask(M3PTaskBase):
    """Pre-trains M3P on text-only and image-caption data at once, one objective per update."""

    def __init__(self, cfg, dictionary):
        super().__init__(cfg, dictionary)
        self.objectives = split_list(cfg.objectives)
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown or not self.objectives:
            raise M3PDataError(f"--objectives: unknown objective {unknown[0] if unknown else '(none)'!r}; "
                               f"expected some of {', '.join(OBJECTIVES)}")
        kinds = [k for k in (checkpoints.UNDERSTANDING, checkpoints.GENERATION)
                 if any(OBJECTIVES[o].kind == k for o in self.objectives)]
        if len(kinds) > 1:
            raise M3PDataError(
                "--objectives mixes " + " and ".join(
                    f"{k} ({','.join(o for o in self.objectives if OBJECTIVES[o].kind == k)})" for k in kinds)
                + " objectives: they train different models (--arch "
                + " / ".join(checkpoints.archs_of(k) for k in kinds) + ")")
        self.model_kind = kinds[0]
        ratios = split_list(cfg.objective_ratios)
        if ratios:
            try:
                self.ratios = [float(r) for r in ratios]
            except ValueError:
                raise M3PDataError(f"--objective-ratios {cfg.objective_ratios!r}: not numbers")
            if len(self.ratios) != len(self.objectives):
                raise M3PDataError(f"--objective-ratios has {len(self.ratios)} values for {len(self.objectives)} objectives")
            if any(r < 0 for r in self.ratios) or sum(self.ratios) <= 0:
                raise M3PDataError(f"--objective-ratios {cfg.objective_ratios!r}: must be >= 0 and sum to more than 0")
        else:
            self.ratios = None

    def criterions(self):
        return {checkpoints.UNDERSTANDING: ("m3p_pretrain",), checkpoints.GENERATION: ("m3p_generation",)}[self.model_kind]

    def text_langs(self):
        """Languages of the text corpus (--text-langs, else every folder in DATA/text)."""
        return self.folder_langs(self.cfg.text_langs, "text", "text")

    def parallel_pairs(self):
        """(source, target) language pairs of the parallel text (--parallel-pairs, else every DATA/parallel folder)."""
        pairs = [p.split("-") for p in self.folder_langs(self.cfg.parallel_pairs, "parallel", "parallel text")]
        bad = next((p for p in pairs if len(p) != 2 or not all(p)), None)
        if bad is not None:
            raise M3PDataError(f"--parallel-pairs: {'-'.join(bad)!r} is not a language pair like en-de")
        return pairs

    def load_translations(self, src, tgt, split):
        """The two sides of a language pair (fairseq-preprocess's layout), line for line."""
        prefix = os.path.join(self.data_path(), "parallel", f"{src}-{tgt}", f"{split}.{src}-{tgt}.")
        a = self.load_tokens(prefix + src, f"{src}-{tgt} {split} {src} text")
        b = self.load_tokens(prefix + tgt, f"{src}-{tgt} {split} {tgt} text")
        if len(a) != len(b):
            raise M3PDataError(f"{prefix}{tgt}.bin: {len(b)} lines for {len(a)} in {prefix}{src}.bin")
        return a, b

    def build_dev_metric(self):
        """Retrieval recall of --valid-retrieval-langs (zero-shot in pre-training), for the understanding model."""
        langs = retrieval_langs(self.cfg)
        if not langs:
            return super().build_dev_metric()
        if self.model_kind != checkpoints.UNDERSTANDING:
            raise M3PDataError(f"--valid-retrieval-langs {self.cfg.valid_retrieval_langs}: retrieval is scored by the "
                               f"understanding model's VLM head; --objectives {self.cfg.objectives} train the "
                               f"generation model")
        return RetrievalRecall(self, langs)

    def build_model(self, cfg, from_checkpoint=False):
        def prepare(model):  # the heads the objectives need
            for name in self.objectives:
                if OBJECTIVES[name].prepare is not None:
                    OBJECTIVES[name].prepare(self, model)

        return super().build_model(cfg, from_checkpoint, prepare)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        active = [(o, r) for o, r in zip(self.objectives, self.ratios or [1.0] * len(self.objectives)) if r > 0]
        loaded = OrderedDict((o, OBJECTIVES[o].load(self, split, epoch, stream_seed(self.cfg.seed, o)))
                             for o, _ in active)
        natural = {o: OBJECTIVES[o].natural_size(d) for o, d in loaded.items()}
        scale = {o: 1.0 for o in loaded}
        if self.ratios is not None and split == "train":
            # resample each objective to its share of the epoch, so updates follow the ratios
            total, ratio_sum = sum(natural.values()), sum(r for _, r in active)
            scale = {o: r / ratio_sum * total / natural[o] for o, r in active}
        datasets = OrderedDict((o, OBJECTIVES[o].finish(self, d, split, epoch, stream_seed(self.cfg.seed, o), scale[o]))
                               for o, d in loaded.items())
        if split != "train" and self.dev_metric is not None:  # zero-shot retrieval recall, beside the objectives
            datasets[QUERIES] = self.dev_metric.queries(split, split)
        self.datasets[split] = MultitaskDataset(datasets, split=split)
        logger.info(f"{split}: " + ", ".join(f"{n}={len(d)}" for n, d in datasets.items()))
