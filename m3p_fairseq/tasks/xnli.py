"""XNLI on the understanding model: sentence pairs, three classes, accuracy per language.

    fairseq-train DATA --user-dir m3p_fairseq --task m3p_xnli --criterion m3p_classification \\
        --arch m3p_base --pretrained-checkpoint m3p.pt --train-langs en ...
    fairseq-validate DATA --user-dir m3p_fairseq --task m3p_xnli --path checkpoint_best.pt \\
        --valid-subset test.en,test.de,test.fr --criterion m3p_classification

Reads fairseq's sentence-prediction layout as ``m3p-import-dataset xnli`` writes it:
``xnli/{lang}/{input0,input1}/{split}`` (premise, hypothesis) and ``xnli/{lang}/label/{split}``
binarized with the label dictionary beside it. The pair is fed as XLM-R reads one,
``<s> premise </s></s> hypothesis </s>``, text only; a classification head on [CLS] predicts
entailment / neutral / contradiction. The paper fine-tunes on English and tests every language.
"""
import logging
from dataclasses import dataclass

from fairseq.tasks import register_task

from ..checkpoints import UNDERSTANDING
from ..data.code_switch import CodeSwitchConfig
from ..data.xnli_dataset import XNLI_HEAD, XNLI_LABELS, xnli_dataset
from ..utils import split_list
from .base import FinetuneLangsConfig, M3PDataConfig, M3PTaskBase, PretrainedConfig, split_and_langs

logger = logging.getLogger(__name__)


@dataclass
class M3PXNLIConfig(M3PDataConfig, PretrainedConfig, FinetuneLangsConfig, CodeSwitchConfig):
    pass


@register_task("m3p_xnli", dataclass=M3PXNLIConfig)
class M3PXNLITask(M3PTaskBase):
    model_kind = UNDERSTANDING

    def criterions(self):
        return ("m3p_classification",)

    def build_model(self, cfg, from_checkpoint=False):
        return super().build_model(cfg, from_checkpoint, prepare=lambda model: model.register_classification_head(
            XNLI_HEAD, num_classes=len(XNLI_LABELS)))

    def eval_langs(self):
        return self.folder_langs(self.cfg.eval_langs, "xnli", "XNLI data")

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        base = split.split(".", 1)[0]
        default = split_list(self.cfg.train_langs) if base == "train" else self.eval_langs()
        base, langs = split_and_langs(split, default)
        self.datasets[split] = xnli_dataset(self, base, langs, self.cfg.seed, epoch)
        logger.info(f"{split}: {len(self.datasets[split])} pairs ({','.join(langs)})")
