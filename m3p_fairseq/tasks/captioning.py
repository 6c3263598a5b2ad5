"""Image captioning with M3P's generation model: fine-tuning and ``fairseq-generate``.

    fairseq-generate DATA --user-dir m3p_fairseq --task m3p_captioning --path CKPT \\
        --gen-subset test --target-lang de --beam 10 --batch-size 32 --post-process sentencepiece

Generation items are the images of ``DATA/captions/{target_lang}/{split}.ids`` (each image once,
in first-appearance order) with the regions as the source and the image's first caption as the
reference fairseq-generate prints (T- lines). Decoding is fairseq's SequenceGenerator with
incremental decoding; the target language reaches the decoder through the encoder output.
Fine-tuning (``fairseq-train ... --task m3p_captioning --criterion m3p_generation``) is IC over
every caption of ``--caption-langs``.
"""
import logging
from dataclasses import dataclass, field

import numpy as np
from fairseq.tasks import register_task

from ..checkpoints import GENERATION
from ..data.caption_generation_dataset import CaptionGenerationDataset
from ..errors import M3PDataError
from .base import M3PDataConfig, M3PTaskBase

logger = logging.getLogger(__name__)


@dataclass
class M3PCaptioningConfig(M3PDataConfig):
    target_lang: str = field(default="en", metadata={
        "help": "language of the generated captions (one of the model's --langs; its captions/LANG/SPLIT.ids "
                "give the images to caption)"})


@register_task("m3p_captioning", dataclass=M3PCaptioningConfig)
class M3PCaptioningTask(M3PTaskBase):
    model_kind = GENERATION

    def criterions(self):
        return ("m3p_generation",)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if self.cfg.target_lang not in model.langs:
            raise M3PDataError(f"--target-lang {self.cfg.target_lang!r} is not one of the model's languages "
                               f"({', '.join(model.langs)})")
        return model

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        if split == "train":
            self.datasets[split] = self.caption_generation(split, self.cfg.seed)
        else:
            self.datasets[split] = self.images_to_caption(self.cfg.target_lang, split)
        logger.info(f"{split}: {len(self.datasets[split])} items")

    def images_to_caption(self, lang, split):
        """Each image of the split's caption file once, with its first caption as the reference."""
        captions, rows = self.load_captions(lang, split)
        _, first = np.unique(rows, return_index=True)
        first = np.sort(first)  # file order
        return CaptionGenerationDataset(captions, rows[first], np.full(len(first), self.lang_id(lang)),
                                        self.region_dataset(split), self.dictionary,
                                        seed=self.cfg.seed, caption_index=first)
