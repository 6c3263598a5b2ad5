"""Pre-training task of M3P's understanding model: xMLM, MMLM, MRM and VLM, one objective per update.

Data layout (DATA is the positional argument of fairseq-train):

    DATA/dict.txt                                  fairseq dictionary (XLM-R's for real runs)
    DATA/text/{lang}/{split}.{bin,idx}             multilingual text for xMLM (fairseq-preprocess)
    DATA/captions/{lang}/{split}.{bin,idx}         captions (fairseq-preprocess)
    DATA/captions/{lang}/{split}.ids               the image id of each caption line
    DATA/regions/{split}.json                      region store manifest (+ its HDF5 shards)
"""
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
from fairseq.data import (
    ConcatDataset,
    Dictionary,
    IdDataset,
    MaskTokensDataset,
    NestedDictionaryDataset,
    NumelDataset,
    NumSamplesDataset,
    PrependTokenDataset,
    ResamplingDataset,
    RightPadDataset,
    TokenBlockDataset,
    TruncateDataset,
    data_utils,
)
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

from ..errors import M3PInputError
from ..data.code_switch import CodeSwitchConfig, maybe_code_switch
from ..data.image_caption_dataset import ImageCaptionDataset
from ..data.multitask import MultitaskDataset, ObjectiveGroupedIterator, alpha_sampling_probs, resample_to_probs
from ..data.region_dataset import RegionDataset
from ..data.region_store import RegionDataError, RegionStore
from . import generation_objectives as gen

logger = logging.getLogger(__name__)

UNDERSTANDING_OBJECTIVES = ("xmlm", "mmlm", "mrm", "vlm")
OBJECTIVES = UNDERSTANDING_OBJECTIVES + gen.GENERATION_OBJECTIVES  # the generation model's: xdae, ic, dic
TEXT_OBJECTIVES = ("xmlm", "xdae")  # read the multilingual text corpus, sampled per language


class M3PDataError(M3PInputError):
    """Bad input data; the message names the file and the line or id."""


def split_list(value: str) -> List[str]:
    return [x.strip() for x in (value or "").split(",") if x.strip()]


@dataclass
class M3PDataConfig(FairseqDataclass):
    """Data settings shared by M3P's tasks."""

    data: str = field(default="???", metadata={"help": "data folder: dict.txt, text/, captions/, regions/"})
    regions_dir: Optional[str] = field(default=None, metadata={"help": "region stores (default: DATA/regions)"})
    caption_langs: str = field(default="en", metadata={"help": "comma-separated caption languages to read"})
    tokens_per_sample: int = field(default=128, metadata={"help": "max text length in tokens (paper: 128)"})
    max_regions: int = field(default=100, metadata={"help": "regions per image kept (detector order)"})
    region_cache_mb: float = field(default=0, metadata={
        "help": "keep up to this many MB of the images read in memory, per region store and data-loading "
                "process (float16 features: ~0.4 MB an image of 100 x 2048 regions); 0: read each time"})
    seed: int = II("common.seed")


@dataclass
class MultitaskMultimodalConfig(M3PDataConfig, gen.GenerationObjectivesConfig, CodeSwitchConfig):
    objectives: str = field(default="xmlm,mmlm,mrm,vlm", metadata={
        "help": "comma-separated objectives among " + ", ".join(OBJECTIVES) + " (understanding and generation "
                "objectives train different models: one kind per run)"})
    objective_ratios: str = field(default="", metadata={
        "help": "comma-separated share of updates per objective (same order); empty: each objective's natural size"})
    text_langs: str = field(default="", metadata={"help": "languages of the xMLM corpus (default: every folder in DATA/text)"})
    alpha: float = field(default=0.3, metadata={"help": "language sampling exponent for xMLM (paper: 0.3)"})
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


class M3PTaskBase(FairseqTask):
    """Dictionary, region stores and caption loading shared by M3P's tasks."""

    def __init__(self, cfg, dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.mask_idx = dictionary.index("<mask>")
        self._stores = {}
        self.region_feat_dim = self.num_region_classes = None
        manifest = self.region_manifest("train")
        if os.path.exists(manifest):
            store = self.region_store("train")
            self.region_feat_dim, self.num_region_classes = store.feat_dim, store.num_classes

    @classmethod
    def load_dictionary(cls, path):
        if not os.path.exists(path):
            raise M3PDataError(f"{path}: dictionary not found")
        d = Dictionary.load(path)
        d.add_symbol("<mask>")  # last, as in XLM-R (250,001 pieces + <mask>)
        return d

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        paths = utils_split_paths(cfg.data)
        if not os.path.isdir(paths[0]):
            raise M3PDataError(f"{paths[0]}: data folder not found")
        dictionary = cls.load_dictionary(os.path.join(paths[0], "dict.txt"))
        logger.info(f"dictionary: {len(dictionary)} types")
        return cls(cfg, dictionary)

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary

    def max_positions(self):
        return self.cfg.tokens_per_sample

    def criterions(self):
        """The criterions that can train this task's batches (empty: any)."""
        return ()

    def build_criterion(self, cfg, from_checkpoint=False):
        # a criterion of another task would fail at the first batch with a KeyError deep in its forward
        name, fits = getattr(cfg, "_name", None), self.criterions()
        if fits and name not in fits:
            raise M3PDataError(f"--criterion {name}: the {self.cfg._name} task's batches are trained with "
                               f"--criterion {' or '.join(fits)}")
        return super().build_criterion(cfg, from_checkpoint)

    def data_path(self, epoch=1):
        paths = utils_split_paths(self.cfg.data)
        return paths[(epoch - 1) % len(paths)]

    def region_manifest(self, split):
        base = self.cfg.regions_dir or os.path.join(self.data_path(), "regions")
        return os.path.join(base, f"{split}.json")

    def region_store(self, split) -> RegionStore:
        if split not in self._stores:
            self._stores[split] = RegionStore(self.region_manifest(split), cache_mb=self.cfg.region_cache_mb)
        return self._stores[split]

    def load_tokens(self, prefix, what):
        ds = data_utils.load_indexed_dataset(prefix, self.dictionary, combine=False)
        if ds is None:
            raise M3PDataError(f"{prefix}.bin: {what} not found")
        return ds

    def load_captions(self, lang, split):
        """Captions of one language with their image rows; checks every line."""
        folder = os.path.join(self.data_path(), "captions")
        if not os.path.isdir(os.path.join(folder, lang)):
            have = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
            raise M3PDataError(f"{os.path.join(folder, lang)}: no captions for language {lang!r} "
                               f"(have: {', '.join(have) or 'none'})")
        prefix = os.path.join(folder, lang, split)
        captions = self.load_tokens(prefix, f"{lang} {split} captions")
        ids_path = prefix + ".ids"
        if not os.path.exists(ids_path):
            raise M3PDataError(f"{ids_path}: missing (the image id of each caption line)")
        with open(ids_path, encoding="utf-8") as f:
            ids = [line.strip() for line in f]
        if len(ids) != len(captions):
            raise M3PDataError(f"{ids_path}: {len(ids)} image ids for {len(captions)} captions in {prefix}.bin")
        sizes = np.asarray(captions.sizes)
        empty = np.nonzero(sizes <= 1)[0]  # </s> only
        if len(empty):
            raise M3PDataError(f"{prefix}.bin: line {empty[0] + 1} is an empty caption")
        too_long = np.nonzero(sizes + 1 > self.cfg.tokens_per_sample)[0]
        if len(too_long):
            raise M3PDataError(f"{prefix}.bin: line {too_long[0] + 1} has {sizes[too_long[0]] + 1} tokens, "
                               f"more than --tokens-per-sample {self.cfg.tokens_per_sample}")
        try:
            rows = self.region_store(split).indices_of(ids, source=ids_path)
        except RegionDataError as e:
            raise M3PDataError(str(e))
        # <s> caption </s>, as XLM-R sees a sentence
        return PrependTokenDataset(captions, self.dictionary.bos()), rows

    def region_dataset(self, split):
        try:
            return RegionDataset(self.region_store(split), max_regions=self.cfg.max_regions)
        except RegionDataError as e:
            raise M3PDataError(str(e))

    def apply_mask(self, dataset, seed):
        return MaskTokensDataset.apply_mask(
            dataset, self.dictionary, pad_idx=self.dictionary.pad(), mask_idx=self.mask_idx, seed=seed,
            mask_prob=self.cfg.mask_prob, leave_unmasked_prob=self.cfg.leave_unmasked_prob,
            random_token_prob=self.cfg.random_token_prob)


def utils_split_paths(data):
    from fairseq import utils

    return utils.split_paths(data)


@register_task("multitask_multimodal", dataclass=MultitaskMultimodalConfig)
class MultitaskMultimodalTask(M3PTaskBase):
    """Pre-trains M3P's understanding model on text-only and image-caption data at once."""

    def __init__(self, cfg, dictionary):
        super().__init__(cfg, dictionary)
        self.objectives = split_list(cfg.objectives)
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown or not self.objectives:
            raise M3PDataError(f"--objectives: unknown objective {unknown[0] if unknown else '(none)'!r}; "
                               f"expected some of {', '.join(OBJECTIVES)}")
        self.generation = gen.check_objective_kinds(self.objectives, UNDERSTANDING_OBJECTIVES)
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
        return ("m3p_generation",) if self.generation else ("m3p_pretrain",)

    # ---- xMLM ------------------------------------------------------------------------------------
    def text_langs(self):
        langs = split_list(self.cfg.text_langs)
        folder = os.path.join(self.data_path(), "text")
        if not langs:
            langs = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))) \
                if os.path.isdir(folder) else []
        if not langs:
            raise M3PDataError(f"{folder}: no text corpus for xMLM")
        for lang in langs:
            if not os.path.isdir(os.path.join(folder, lang)):
                raise M3PDataError(f"{os.path.join(folder, lang)}: no text for language {lang!r}")
        return langs

    def xmlm_blocks(self, split, epoch):
        """Per language: text cut into blocks of at most tokens_per_sample - 1 pieces, <s> in front."""
        blocks = []
        for lang in self.text_langs():
            ds = self.load_tokens(os.path.join(self.data_path(epoch), "text", lang, split), f"{lang} {split} text")
            if self.cfg.sample_break_mode == "eos":
                # a line is a sample already (fairseq-preprocess ends each with </s>); TokenBlockDataset's
                # eos mode uses np.compat, gone in numpy 2
                ds = TruncateDataset(ds, self.cfg.tokens_per_sample - 1)
            else:
                ds = TokenBlockDataset(ds, ds.sizes, self.cfg.tokens_per_sample - 1, pad=self.dictionary.pad(),
                                       eos=self.dictionary.eos(), break_mode=self.cfg.sample_break_mode)
            blocks.append(PrependTokenDataset(ds, self.dictionary.bos()))
        return blocks

    def build_xmlm(self, per_lang, split, epoch, scale=1.0):
        """Alpha-sampled languages (training only), concatenated, then masked as RoBERTa/XLM-R."""
        if split == "train":
            probs = alpha_sampling_probs([len(d) for d in per_lang], self.cfg.alpha)
            logger.info("xMLM language sampling: " + ", ".join(
                f"{l}={p:.3f}" for l, p in zip(self.text_langs(), probs)))
            per_lang = resample_to_probs(per_lang, probs, self.cfg.seed, epoch, scale)
        text = ConcatDataset(per_lang) if len(per_lang) > 1 else per_lang[0]
        src, tgt = self.apply_mask(text, self.cfg.seed)
        return NestedDictionaryDataset(
            {
                "id": IdDataset(),
                "net_input": {"src_tokens": RightPadDataset(src, pad_idx=self.dictionary.pad()),
                              "src_lengths": NumelDataset(src, reduce=False)},
                "target": RightPadDataset(tgt, pad_idx=self.dictionary.pad()),
                "nsentences": NumSamplesDataset(),
                "ntokens": NumelDataset(src, reduce=True),
            },
            sizes=[src.sizes],
        )

    # ---- image-caption objectives ------------------------------------------------------------------
    def build_pairs(self, objective, split, seed):
        caps, rows = [], []
        for lang in split_list(self.cfg.caption_langs):
            c, r = self.load_captions(lang, split)
            caps.append(maybe_code_switch(self, c, lang, split, seed))  # --code-switch: before MMLM masks it
            rows.append(r)
        captions = ConcatDataset(caps) if len(caps) > 1 else caps[0]
        rows = np.concatenate(rows)
        kw = {}
        if objective == "mmlm":
            kw["masked_source"], kw["masked_target"] = self.apply_mask(captions, seed)
        return ImageCaptionDataset(captions, rows, self.region_dataset(split), self.dictionary.pad(), objective,
                                   seed=seed, mrm_prob=self.cfg.mrm_prob, mrm_zero_prob=self.cfg.mrm_zero_prob,
                                   vlm_negative_prob=self.cfg.vlm_negative_prob,
                                   vlm_text_negative_prob=self.cfg.vlm_text_negative_prob, **kw)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        parts = OrderedDict()
        for k, objective in enumerate(self.objectives):
            if self.ratios is not None and self.ratios[k] == 0:
                continue
            seed = self.cfg.seed + 1000 * k  # each objective its own random stream
            if objective == "xmlm":
                parts[objective] = self.xmlm_blocks(split, epoch)
            elif objective == "xdae":
                parts[objective] = gen.xdae_sentences(self, split, epoch)
            elif objective in gen.GENERATION_OBJECTIVES:
                parts[objective] = gen.build_caption_generation(self, objective, split, seed)
            else:
                parts[objective] = self.build_pairs(objective, split, seed)
        natural = {o: sum(len(d) for d in v) if o in TEXT_OBJECTIVES else len(v) for o, v in parts.items()}
        scale = {o: 1.0 for o in parts}
        if self.ratios is not None and split == "train":
            # resample each objective to its share of the epoch, so updates follow the ratios
            total = sum(natural.values())
            share = {o: r / sum(self.ratios) for o, r in zip(self.objectives, self.ratios)}
            scale = {o: share[o] * total / natural[o] for o in parts}
        datasets = OrderedDict()
        for o, d in parts.items():
            if o == "xmlm":
                datasets[o] = self.build_xmlm(d, split, epoch, scale[o])
            elif o == "xdae":
                datasets[o] = gen.build_xdae(self, d, split, epoch, scale[o], self.cfg.seed + 1000 * self.objectives.index(o))
            elif scale[o] != 1.0:
                datasets[o] = ResamplingDataset(d, size_ratio=scale[o], seed=self.cfg.seed, epoch=epoch,
                                                replace=scale[o] >= 1.0)
            else:
                datasets[o] = d
        self.datasets[split] = MultitaskDataset(datasets, split=split)
        logger.info(f"{split}: " + ", ".join(f"{n}={len(d)}" for n, d in datasets.items()))

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None,
                           ignore_invalid_inputs=False, required_batch_size_multiple=1, seed=1, num_shards=1,
                           shard_id=0, num_workers=0, epoch=1, data_buffer_size=0, disable_iterator_cache=False,
                           skip_remainder_batch=False, grouped_shuffling=False, update_epoch_batch_itr=False):
        if not isinstance(dataset, MultitaskDataset):
            return super().get_batch_iterator(
                dataset, max_tokens, max_sentences, max_positions, ignore_invalid_inputs,
                required_batch_size_multiple, seed, num_shards, shard_id, num_workers, epoch, data_buffer_size,
                disable_iterator_cache, skip_remainder_batch, grouped_shuffling, update_epoch_batch_itr)
        dataset.set_epoch(epoch)
        batch_samplers = []
        with data_utils.numpy_seed(seed + epoch):
            for k in range(len(dataset.datasets)):
                indices = dataset.ordered_indices_of(k)
                batch_samplers.append(dataset.batch_by_size(
                    indices, max_tokens=max_tokens, max_sentences=max_sentences,
                    required_batch_size_multiple=required_batch_size_multiple))
        # all micro-batches of one update on every worker come from one objective
        mult_rate = max(self.cfg.update_freq) if dataset.split == "train" else 1
        step = mult_rate * num_shards
        for name, batches in zip(dataset.names, batch_samplers):
            if len(batches) < step:
                raise M3PDataError(f"{dataset.split}: objective {name} has {len(batches)} batches, fewer than "
                                   f"update_freq x workers = {step}; use smaller batches or more data")
        return ObjectiveGroupedIterator(
            dataset, dataset.collater, batch_samplers, seed=seed, num_shards=num_shards, shard_id=shard_id,
            # no prefetch thread (buffer_size=0): a thread stopped at interpreter exit in the middle of an
            # h5py read keeps h5py's lock, and fairseq-train then hangs after "done training"
            num_workers=num_workers, epoch=epoch, mult_rate=mult_rate, buffer_size=0,
            skip_remainder_batch=skip_remainder_batch)

    def build_model(self, cfg, from_checkpoint=False):
        gen.default_model_langs(self, cfg)
        model = super().build_model(cfg, from_checkpoint)
        gen.check_model(self, model, cfg, self.generation)  # understanding objectives: understanding model, and vice versa
        return model

