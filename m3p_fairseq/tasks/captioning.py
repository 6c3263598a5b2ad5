"""Image captioning with M3P's generation model: fine-tuning and ``fairseq-generate``.

    fairseq-generate DATA --user-dir m3p_fairseq --task m3p_captioning --path CKPT \\
        --gen-subset test --target-lang de --beam 10 --batch-size 32 --post-process sentencepiece

Generation items are the images of ``DATA/captions/{lang}/{split}.ids`` (each image once per
language, in first-appearance order) with the regions as the source and the image's first caption
as the reference fairseq-generate prints (T- lines); the languages are ``--target-lang``, else every
language of ``--caption-langs`` (``valid.de``: German only). Decoding is fairseq's SequenceGenerator
with incremental decoding; the target language reaches the decoder through the encoder output.
Fine-tuning (``fairseq-train ... --task m3p_captioning --criterion m3p_generation``) is IC over
every caption of ``--caption-langs``; with ``--eval-bleu`` validation captions the valid images of
each of them and reports BLEU-4 (``bleu_{lang}``, their mean ``bleu``; evaluation/validation.py).
"""
import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from fairseq.data import ConcatDataset
from fairseq.tasks import register_task

from ..checkpoints import GENERATION
from ..data.caption_generation_dataset import CaptionGenerationDataset
from ..errors import M3PDataError
from ..evaluation.validation import GenerationValidConfig
from ..utils import split_list
from .base import M3PDataConfig, M3PTaskBase, split_and_langs

logger = logging.getLogger(__name__)


@dataclass
class M3PCaptioningConfig(M3PDataConfig, GenerationValidConfig):
    target_lang: Optional[str] = field(default=None, metadata={
        "help": "language of the generated captions (one of the model's --langs; its captions/LANG/SPLIT.ids "
                "give the images to caption); default: every language of --caption-langs"})


@register_task("m3p_captioning", dataclass=M3PCaptioningConfig)
class M3PCaptioningTask(M3PTaskBase):
    model_kind = GENERATION

    def criterions(self):
        return ("m3p_generation",)

    def target_langs(self):
        return [self.cfg.target_lang] if self.cfg.target_lang else split_list(self.cfg.caption_langs)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        flag = "--target-lang" if self.cfg.target_lang else "--caption-langs"
        for lang in self.target_langs():
            if lang not in model.langs:
                raise M3PDataError(f"{flag} {lang!r} is not one of the model's languages ({', '.join(model.langs)})")
        return model

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        if split == "train":
            self.datasets[split] = self.caption_generation(split, self.cfg.seed)
        else:
            base, langs = split_and_langs(split, self.target_langs())
            self.datasets[split] = self.images_to_caption(langs, base)
        logger.info(f"{split}: {len(self.datasets[split])} items")

    def images_to_caption(self, langs, split):
        """Each image of the split's caption file of each language once, with its first caption as the reference."""
        caps, rows, ids, index, offset = [], [], [], [], 0
        for lang in langs:
            captions, r = self.load_captions(lang, split)
            _, first = np.unique(r, return_index=True)
            first = np.sort(first)  # file order
            caps.append(captions)
            rows.append(r[first])
            ids.append(np.full(len(first), self.lang_id(lang)))
            index.append(first + offset)
            offset += len(captions)
        return CaptionGenerationDataset(caps[0] if len(caps) == 1 else ConcatDataset(caps), np.concatenate(rows),
                                        np.concatenate(ids), self.region_dataset(split), self.dictionary,
                                        seed=self.cfg.seed, caption_index=np.concatenate(index))
