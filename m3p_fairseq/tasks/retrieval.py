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
from dataclasses import dataclass

from fairseq.tasks import register_task

from ..checkpoints import UNDERSTANDING
from ..data.code_switch import CodeSwitchConfig
from ..data.retrieval_dataset import RetrievalDataConfig, retrieval_pairs
from ..objectives import add_retrieval_heads
from ..utils import split_list
from .base import M3PDataConfig, M3PTaskBase, PretrainedConfig, split_and_langs

logger = logging.getLogger(__name__)


@dataclass
class M3PRetrievalConfig(M3PDataConfig, RetrievalDataConfig, CodeSwitchConfig, PretrainedConfig):
    pass


@register_task("m3p_retrieval", dataclass=M3PRetrievalConfig)
class M3PRetrievalTask(M3PTaskBase):
    model_kind = UNDERSTANDING

    def criterions(self):
        return ("m3p_retrieval",)

    def build_model(self, cfg, from_checkpoint=False):
        return super().build_model(cfg, from_checkpoint, lambda model: add_retrieval_heads(self, model))

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        base, langs = split_and_langs(split, split_list(self.cfg.caption_langs))
        self.datasets[split] = dataset = retrieval_pairs(self, base, langs, self.cfg.seed)
        logger.info(f"{split}: {len(dataset)} captions ({','.join(langs)}), {self.cfg.num_negatives} negatives each")
