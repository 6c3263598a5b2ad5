"""News title generation (XGLUE NTG) with M3P's generation model: news body -> title, text only.

    fairseq-train DATA --user-dir m3p_fairseq --task m3p_ntg --criterion m3p_generation \\
        --arch m3p_seq2seq_base --pretrained-checkpoint m3p-gen.pt --train-langs en ...
    fairseq-generate DATA --user-dir m3p_fairseq --task m3p_ntg --path checkpoint_best.pt \\
        --gen-subset test.de --beam 10 --post-process sentencepiece

Reads ``ntg/{lang}/{src,tgt}/{split}`` as ``m3p-import-dataset ntg`` writes them. The paper
fine-tunes on English (XGLUE has English training data only) and tests every language; the body
is cut to --tokens-per-sample, source and target carry the same language id.
"""
import logging
from dataclasses import dataclass

from fairseq.tasks import register_task

from ..checkpoints import GENERATION
from ..data.code_switch import CodeSwitchConfig
from ..data.ntg_dataset import NTGDataConfig, ntg_dataset
from ..evaluation.validation import GenerationValidConfig
from ..utils import split_list
from .base import FinetuneLangsConfig, M3PDataConfig, M3PTaskBase, PretrainedConfig, split_and_langs

logger = logging.getLogger(__name__)


@dataclass
class M3PNTGConfig(M3PDataConfig, PretrainedConfig, FinetuneLangsConfig, NTGDataConfig, GenerationValidConfig,
                   CodeSwitchConfig):
    pass


@register_task("m3p_ntg", dataclass=M3PNTGConfig)
class M3PNTGTask(M3PTaskBase):
    model_kind = GENERATION

    def criterions(self):
        return ("m3p_generation",)

    def eval_langs(self):
        return self.folder_langs(self.cfg.eval_langs, "ntg", "NTG data")

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        base = split.split(".", 1)[0]
        default = split_list(self.cfg.train_langs) if base == "train" else self.eval_langs()
        base, langs = split_and_langs(split, default)
        self.datasets[split] = ntg_dataset(self, base, langs, self.cfg.seed)
        logger.info(f"{split}: {len(self.datasets[split])} items ({','.join(langs)})")
