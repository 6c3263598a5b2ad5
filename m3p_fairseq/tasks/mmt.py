"""Multimodal machine translation with M3P's generation model: a caption and its image -> the
caption in another language.

    fairseq-train DATA --user-dir m3p_fairseq --task m3p_mmt --criterion m3p_generation \\
        --arch m3p_seq2seq_base --pretrained-checkpoint m3p-gen.pt --directions en-de,de-en,en-fr,fr-en ...
    fairseq-generate DATA --user-dir m3p_fairseq --task m3p_mmt --path checkpoint_best.pt \\
        --gen-subset test.en-de --beam 10 --post-process sentencepiece

Reads the parallel captions of a split (Multi30K: ``captions/{lang}/{split}`` line-aligned across
languages, the same image on the same line, which is checked). The encoder reads
``<s> source </s> [regions]`` with the source language id, the decoder writes the target with
the target language id: the one place where the two ids differ. Training merges the directions
of ``--directions``; ``{split}.{src}-{tgt}`` is one direction.
"""
import logging
from dataclasses import dataclass, field

import numpy as np
from fairseq.data import ConcatDataset, StripTokenDataset
from fairseq.tasks import register_task

from ..data.text_generation_dataset import TextGenerationDataset
from ..checkpoints import GENERATION
from ..errors import M3PDataError
from ..evaluation.validation import GenerationValidConfig
from ..utils import split_list
from .base import M3PDataConfig, M3PTaskBase, PretrainedConfig, split_and_langs

logger = logging.getLogger(__name__)


@dataclass
class M3PMMTConfig(M3PDataConfig, PretrainedConfig, GenerationValidConfig):
    directions: str = field(default="en-de", metadata={
        "help": "comma-separated source-target caption languages (en-de,de-en,...); training merges them"})


def parse_direction(direction):
    parts = direction.split("-")
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise M3PDataError(f"--directions: {direction!r} is not a direction like en-de (source-target)")
    return parts


@register_task("m3p_mmt", dataclass=M3PMMTConfig)
class M3PMMTTask(M3PTaskBase):
    model_kind = GENERATION

    def criterions(self):
        return ("m3p_generation",)

    def direction(self, direction, split):
        src, tgt = parse_direction(direction)
        source, src_rows = self.load_captions(src, split)
        target, tgt_rows = self.load_captions(tgt, split)
        if len(src_rows) != len(tgt_rows):
            raise M3PDataError(f"captions/{tgt}/{split}.ids: {len(tgt_rows)} lines for {len(src_rows)} in "
                               f"captions/{src}/{split}.ids: MMT needs parallel caption files")
        differ = np.nonzero(src_rows != tgt_rows)[0]
        if len(differ):
            raise M3PDataError(f"captions/{tgt}/{split}.ids: line {differ[0] + 1} names another image than "
                               f"captions/{src}/{split}.ids: MMT needs the same image on the same line")
        n = len(src_rows)
        # the target without its <s> (a caption has <s> only in front): the decoder starts from </s>
        return source, StripTokenDataset(target, self.dictionary.bos()), src_rows, \
            np.full(n, self.lang_id(src)), np.full(n, self.lang_id(tgt))

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        base, directions = split_and_langs(split, split_list(self.cfg.directions))
        parts = [self.direction(d, base) for d in directions]
        concat = (lambda ds: ConcatDataset(ds) if len(ds) > 1 else ds[0])
        self.datasets[split] = TextGenerationDataset(
            concat([p[0] for p in parts]), concat([p[1] for p in parts]), np.concatenate([p[3] for p in parts]),
            np.concatenate([p[4] for p in parts]), self.dictionary, regions=self.region_dataset(base),
            image_rows=np.concatenate([p[2] for p in parts]))
        logger.info(f"{split}: {len(self.datasets[split])} pairs ({','.join(directions)})")
