"""The generation objectives (xDAE, IC, DIC) inside M3P's tasks: settings, datasets, model checks.

xDAE reads the multilingual text corpus sentence by sentence, languages sampled as for xMLM
(alpha-smoothed), and noises it with ``XDAEDataset``; IC and DIC read the image-caption pairs
of ``--caption-langs`` with ``CaptionGenerationDataset``. Every item carries its language id: the
ids are the model's ``--langs`` order, which a new model takes from the data folder (every
language under DATA/text and DATA/captions) and a checkpoint keeps.
"""
import os
from dataclasses import dataclass, field

import numpy as np
from fairseq.data import (
    AppendTokenDataset,
    ConcatDataset,
    PrependTokenDataset,
    StripTokenDataset,
    TruncateDataset,
)
from fairseq.dataclass import FairseqDataclass

from ..data.caption_generation_dataset import CaptionGenerationDataset
from ..data.multitask import alpha_sampling_probs, resample_to_probs
from ..data.xdae_dataset import XDAEDataset
from ..errors import M3PInputError
from ..models.m3p_seq2seq import M3PSeq2SeqModel, split_langs

GENERATION_OBJECTIVES = ("xdae", "ic", "dic")
GENERATION_ARCHS = "m3p_seq2seq_base, m3p_seq2seq_tiny"
UNDERSTANDING_ARCHS = "m3p_base, m3p_large, m3p_tiny"


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


def check_objective_kinds(objectives, understanding_objectives):
    """One run trains one model: refuse a mix of understanding and generation objectives."""
    gen = [o for o in objectives if o in GENERATION_OBJECTIVES]
    und = [o for o in objectives if o in understanding_objectives]
    if gen and und:
        raise M3PInputError(f"--objectives mixes understanding ({','.join(und)}) and generation ({','.join(gen)}) "
                            f"objectives: they train different models (--arch {UNDERSTANDING_ARCHS} / {GENERATION_ARCHS})")
    return bool(gen)


def data_languages(task):
    """Every language with text or captions in the data folder, sorted."""
    langs = set()
    for kind in ("text", "captions"):
        folder = os.path.join(task.data_path(), kind)
        if os.path.isdir(folder):
            langs.update(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    return sorted(langs)


def is_generation_arch(cfg):
    from fairseq.models import ARCH_MODEL_REGISTRY

    arch = getattr(cfg, "arch", None) or getattr(cfg, "_name", None)
    return ARCH_MODEL_REGISTRY.get(arch) is M3PSeq2SeqModel


def default_model_langs(task, cfg):
    """A new generation model gets the data's languages unless --langs says otherwise."""
    if is_generation_arch(cfg) and not split_langs(getattr(cfg, "langs", None)):
        langs = data_languages(task)
        if not langs:
            raise M3PInputError(f"{task.data_path()}: no text/ or captions/ languages to build the language embedding from")
        cfg.langs = ",".join(langs)


def check_model(task, model, cfg, generation):
    """The model must be of the kind the objectives train; a generation model's languages are recorded."""
    arch = getattr(cfg, "arch", None) or getattr(cfg, "_name", None) or model.__class__.__name__
    is_gen = isinstance(model, M3PSeq2SeqModel)
    is_und = hasattr(model, "encoder") and hasattr(model.encoder, "region_embed") and not hasattr(model, "decoder")
    if generation and not is_gen:
        raise M3PInputError(f"--arch {arch}: the {task.__class__.__name__}'s generation objectives need an M3P "
                            f"generation model ({GENERATION_ARCHS}), not an understanding model")
    if not generation and not is_und:
        raise M3PInputError(f"--arch {arch}: the {task.__class__.__name__} needs an M3P understanding model "
                            f"({UNDERSTANDING_ARCHS})" + (" for these objectives" if is_gen else ""))
    if is_gen:
        task.model_langs = model.langs


def lang_id(task, lang):
    langs = getattr(task, "model_langs", None) or data_languages(task)
    if lang not in langs:
        raise M3PInputError(f"language {lang!r} is not one of the model's languages (--langs {','.join(langs)})")
    return langs.index(lang)


def xdae_sentences(task, split, epoch):
    """Per language of the text corpus: one sentence (corpus line) per item, ``<s> ... </s>``, cut to
    --tokens-per-sample. xDAE denoises sentences, as the reference's DAE does, not xMLM's blocks."""
    out = []
    for lang in task.text_langs():
        ds = task.load_tokens(os.path.join(task.data_path(epoch), "text", lang, split), f"{lang} {split} text")
        # cut the text, not its </s>: strip it, truncate, put it back, then <s> in front
        ds = TruncateDataset(StripTokenDataset(ds, task.dictionary.eos()), task.cfg.tokens_per_sample - 2)
        ds = PrependTokenDataset(AppendTokenDataset(ds, task.dictionary.eos()), task.dictionary.bos())
        out.append(ds)
    return out


def build_xdae(task, per_lang, split, epoch, scale, seed):
    """Sentences alpha-sampled per language (training only, as xMLM), concatenated, then noised."""
    langs = task.text_langs()
    if split == "train":
        probs = alpha_sampling_probs([len(d) for d in per_lang], task.cfg.alpha)
        per_lang = resample_to_probs(per_lang, probs, task.cfg.seed, epoch, scale)
    text = ConcatDataset(per_lang) if len(per_lang) > 1 else per_lang[0]
    ids = np.repeat([lang_id(task, l) for l in langs], [len(d) for d in per_lang])
    cfg = task.cfg
    return XDAEDataset(text, ids, task.dictionary, seed, shuffle_distance=cfg.xdae_shuffle_distance,
                       drop_prob=cfg.xdae_drop_prob, mask_ratio=cfg.xdae_mask_ratio,
                       poisson_lambda=cfg.xdae_poisson_lambda, mask_idx=task.mask_idx)


def build_caption_generation(task, objective, split, seed, langs=None):
    """IC or DIC over the captions of every language in ``langs`` (default --caption-langs)."""
    caps, rows, ids = [], [], []
    for lang in langs or split_langs(task.cfg.caption_langs):
        c, r = task.load_captions(lang, split)
        caps.append(c)
        rows.append(r)
        ids.append(np.full(len(c), lang_id(task, lang)))
    captions = ConcatDataset(caps) if len(caps) > 1 else caps[0]
    return CaptionGenerationDataset(captions, np.concatenate(rows), np.concatenate(ids), task.region_dataset(split),
                                    task.dictionary, objective=objective, seed=seed,
                                    dic_mask_ratio=getattr(task.cfg, "dic_mask_ratio", 0.3),
                                    dic_poisson_lambda=getattr(task.cfg, "dic_poisson_lambda", 3.0))
