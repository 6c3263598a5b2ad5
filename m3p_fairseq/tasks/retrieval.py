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
from collections import OrderedDict
from dataclasses import dataclass

from fairseq.tasks import register_task

from ..checkpoints import UNDERSTANDING
from ..data.code_switch import CodeSwitchConfig
from ..data.multitask import MultitaskDataset
from ..data.retrieval_dataset import RetrievalDataConfig, retrieval_pairs
from ..evaluation.validation import QUERIES, RetrievalRecall, RetrievalValidConfig, retrieval_langs
from ..objectives import add_retrieval_heads
from ..utils import split_list
from .base import M3PDataConfig, M3PTaskBase, PretrainedConfig, split_and_langs

logger = logging.getLogger(__name__)


@dataclass
class M3PRetrievalConfig(M3PDataConfig, RetrievalDataConfig, CodeSwitchConfig, PretrainedConfig, RetrievalValidConfig):
    pass


@register_task("m3p_retrieval", dataclass=M3PRetrievalConfig)
class M3PRetrievalTask(M3PTaskBase):
    model_kind = UNDERSTANDING

    def criterions(self):
        return ("m3p_retrieval",)

    def build_model(self, cfg, from_checkpoint=False):
        return super().build_model(cfg, from_checkpoint, lambda model: add_retrieval_heads(self, model))

    def build_dev_metric(self):
        """mR per language of --valid-retrieval-langs (default --caption-langs)."""
        return RetrievalRecall(self, retrieval_langs(self.cfg, self.cfg.caption_langs))

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        base, langs = split_and_langs(split, split_list(self.cfg.caption_langs))
        pairs = retrieval_pairs(self, base, langs, self.cfg.seed)
        logger.info(f"{split}: {len(pairs)} captions ({','.join(langs)}), {self.cfg.num_negatives} negatives each")
        if base == "train":
            self.datasets[split] = pairs
            return
        # validation: the loss on pairs with sampled negatives, and the recall of the query batches
        queries = self.dev_metric.queries(split, base, langs if "." in split else None)
        self.datasets[split] = MultitaskDataset(OrderedDict([("ret", pairs), (QUERIES, queries)]), split=split)
        logger.info(f"{split}: retrieval recall of {', '.join(f'{l} ({len(s.images)} images)' for l, s in zip(queries.langs, queries.subsets))}")
