"""Image-text retrieval fine-tuning of the understanding model (Multi30K / MSCOCO / MILD style).

    fairseq-train DATA --user-dir m3p_fairseq --task m3p_retrieval --criterion m3p_retrieval \\
        --arch m3p_base --pretrained-checkpoint m3p.pt --caption-langs en \\
        --optimizer adam --adam-betas '(0.9,0.98)' --lr 5e-5 ...

Each caption of ``--caption-langs`` becomes its positive pair plus ``--num-negatives`` negatives
(the paper: 3, each replacing the image or the text), trained with the VLM head's binary
cross-entropy. The fine-tuning strategies are choices of ``--caption-langs``: ``en`` (fine-tune on
English), one language (fine-tune on each), all of them (fine-tune on all, merged); zero-shot is the
pre-trained checkpoint evaluated as it is. The same run trains the dual encoder's projection heads
(``--dual-dim``) with an in-batch contrastive loss, for two-stage retrieval.

MILD mode (``--context``): each query line of ``captions/{lang}`` has the context of its image in
``mild/{lang}/context`` (line-aligned, as ``m3p-import-dataset mild`` writes them); the context is
fed with the image (``<s> query </s></s> context </s> [regions]``). Evaluation with and without it:
``m3p-downstream-eval retrieval ... [--context]``.
"""
import logging
import os
from dataclasses import dataclass, field

import numpy as np
from fairseq.data import ConcatDataset, PrependTokenDataset
from fairseq.tasks import register_task

from ..checkpoints import UNDERSTANDING
from ..data.code_switch import CodeSwitchConfig
from ..data.retrieval_dataset import RetrievalDataset
from ..errors import M3PDataError
from ..models.dual_encoder import add_dual_heads
from ..utils import split_list
from .base import M3PDataConfig, M3PTaskBase, PretrainedConfig, split_and_langs

logger = logging.getLogger(__name__)


@dataclass
class M3PRetrievalConfig(M3PDataConfig, CodeSwitchConfig, PretrainedConfig):
    num_negatives: int = field(default=3, metadata={"help": "negatives sampled per positive pair (paper: 3)"})
    text_negative_prob: float = field(default=0.5, metadata={
        "help": "share of negatives that replace the text (the others replace the image)"})
    context: bool = field(default=False, metadata={
        "help": "MILD mode: feed each image's context text (DATA/mild/{lang}/context/{split}) with the image"})
    dual_dim: int = field(default=128, metadata={
        "help": "embedding size of the dual encoder's projection heads (two-stage retrieval); 0: no dual encoder"})


def load_contexts(task, lang, split, num_captions):
    """MILD contexts of ``captions/{lang}/{split}``, line for line, as ``</s> context </s>``."""
    prefix = os.path.join(task.data_path(), "mild", lang, "context", split)
    if not os.path.exists(prefix + ".bin"):
        raise M3PDataError(f"{prefix}.bin: no MILD contexts for captions/{lang}/{split} (--context needs the context "
                           f"of each query line; m3p-import-dataset mild writes them)")
    contexts = task.load_tokens(prefix, f"{lang} {split} contexts")
    if len(contexts) != num_captions:
        raise M3PDataError(f"{prefix}.bin: {len(contexts)} contexts for {num_captions} query lines in "
                           f"captions/{lang}/{split}.bin")
    return PrependTokenDataset(contexts, task.dictionary.eos())


@register_task("m3p_retrieval", dataclass=M3PRetrievalConfig)
class M3PRetrievalTask(M3PTaskBase):
    model_kind = UNDERSTANDING

    def criterions(self):
        return ("m3p_retrieval",)

    def build_model(self, cfg, from_checkpoint=False):
        def prepare(model):
            if self.cfg.dual_dim > 0:
                add_dual_heads(model, self.cfg.dual_dim)

        return super().build_model(cfg, from_checkpoint, prepare)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        base, langs = split_and_langs(split, split_list(self.cfg.caption_langs))
        caps, rows, groups, ctxs = [], [], [], []
        for g, lang in enumerate(langs):
            c, r = self.load_captions(lang, base, negatives=self.cfg.num_negatives > 0)
            if self.cfg.context:
                ctxs.append(load_contexts(self, lang, base, len(c)))
            caps.append(self.code_switched(c, lang, base, self.cfg.seed))
            rows.append(r)
            groups.append(np.full(len(c), g))
        concat = (lambda ds: ConcatDataset(ds) if len(ds) > 1 else ds[0])
        try:
            dataset = RetrievalDataset(concat(caps), np.concatenate(rows), np.concatenate(groups),
                                       self.region_dataset(base), self.dictionary.pad(), self.cfg.num_negatives,
                                       self.cfg.text_negative_prob, seed=self.cfg.seed,
                                       contexts=concat(ctxs) if ctxs else None, max_text=self.cfg.tokens_per_sample)
        except ValueError as e:
            raise M3PDataError(f"{split} ({','.join(langs)}): {e}")
        self.datasets[split] = dataset
        logger.info(f"{split}: {len(dataset)} captions ({','.join(langs)}), {self.cfg.num_negatives} negatives each")
