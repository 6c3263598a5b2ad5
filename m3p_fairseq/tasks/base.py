"""What M3P's tasks share: the data folder, captions and their regions, languages, masking,
code-switching, and building a model of the kind a task trains (from a pre-trained checkpoint).

    DATA/dict.txt                                  fairseq dictionary (XLM-R's for real runs)
    DATA/text/{lang}/{split}.{bin,idx}             multilingual text (fairseq-preprocess)
    DATA/captions/{lang}/{split}.{bin,idx}         captions (fairseq-preprocess)
    DATA/captions/{lang}/{split}.ids               the image id of each caption line
    DATA/regions/{split}.json                      region store manifest (+ its HDF5 shards)
    DATA/regions/{split}.{lang}.json               a language's own store for the split, where it has one

Fine-tuning starts from a pre-trained M3P checkpoint either through the task flag
``--pretrained-checkpoint PATH`` (weights only; checked to be the right kind of model, and the
model takes what the checkpoint fixes: region sizes, languages, the function it computes), or
through fairseq's own ``--restore-file PATH --reset-optimizer --reset-dataloader --reset-meters`` /
``--finetune-from-model PATH``. Evaluation reads one language at a time through split names with a
language suffix: ``test.de`` is the German test set; a plain ``test`` means every evaluation language.

Validation reports each task's own dev metric beside the criterion's loss, so ``checkpoint_best.pt``
is the best by it (``--best-checkpoint-metric NAME --maximize-best-checkpoint-metric``). A task
chooses its metric with one hook, ``build_dev_metric()``, returning None or an object of
evaluation/validation.py (``batch_stats(model, sample)``: summable counts added to a validation
batch's logging output; ``reduce(total)``: the metric logged from their sums; ``owns(sample)``: a
batch of the metric's own, not the criterion's; ``begin_validation()``): ``RetrievalRecall``
(``mR``, ``mR_{lang}``: m3p_retrieval, and pre-training with --valid-retrieval-langs),
``GenerationBleu`` (``bleu``, ``bleu_{target}``: every generation task with --eval-bleu, the
default hook). A classification task whose criterion logs ``accuracy`` (m3p_xnli's
m3p_classification) needs no hook: ``--best-checkpoint-metric accuracy``. Validation batches of
several kinds (a criterion's and a metric's) go in a ``MultitaskDataset``, whose batch iterator keeps
every worker on one kind per step, as fairseq sums their logging outputs key by key.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from fairseq import utils
from fairseq.data import ConcatDataset, MaskTokensDataset, PrependTokenDataset, data_utils
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask
from omegaconf import II

from .. import checkpoints
from ..criterions.summed import summer
from ..data.caption_generation_dataset import CaptionGenerationDataset
from ..data.code_switch import CodeSwitchDataset, CodeSwitchPairDataset, build_tables, find_dictionaries, merge_tables
from ..data.dictionary import load_dictionary
from ..data.image_caption_dataset import require_two_images
from ..data.multitask import MultitaskDataset, ObjectiveGroupedIterator
from ..data.region_dataset import RegionDataset
from ..data.region_store import RegionDataError, RegionStore
from ..errors import M3PDataError, M3PInputError
from ..evaluation.validation import GenerationBleu
from ..utils import split_list

logger = logging.getLogger(__name__)


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
class PretrainedConfig(FairseqDataclass):
    pretrained_checkpoint: Optional[str] = field(default=None, metadata={
        "help": "pre-trained M3P checkpoint to fine-tune from (weights only, checked to be the model kind the "
                "task needs); a checkpoint in --save-dir still takes precedence, so an interrupted run resumes"})


@dataclass
class FinetuneLangsConfig(FairseqDataclass):
    """Languages of a text fine-tuning set (XNLI, NTG): of the m3p_xnli / m3p_ntg tasks, and of their objectives
    (``xnli``, ``ntg``) when fine-tuning keeps pre-training objectives on (multitask_multimodal)."""

    train_langs: str = field(default="en", metadata={"help": "languages to fine-tune on (paper: en)"})
    eval_langs: str = field(default="", metadata={
        "help": "languages of the valid/test splits (default: every language of the set's folder, e.g. DATA/xnli)"})


def split_and_langs(split, default_langs):
    """"test.de" -> ("test", ["de"]); "test" -> ("test", default_langs)."""
    if "." in split:
        base, lang = split.split(".", 1)
        return base, [l for l in lang.split("+") if l]
    return split, list(default_langs)


class M3PTaskBase(FairseqTask):
    """Dictionary, region stores, captions, languages and model building shared by M3P's tasks."""

    #: the model kind the task trains (checkpoints.UNDERSTANDING / GENERATION); None: decided by the task
    model_kind = None

    def __init__(self, cfg, dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.mask_idx = dictionary.index("<mask>")
        self._stores = {}
        self._code_switch_tables = self._code_switch_merged = None
        self.model_langs = None  # the languages of the model's language embedding, once it is built
        self._dev_metric = False  # built on first use (build_dev_metric)
        self.region_feat_dim = self.num_region_classes = None
        # the region sizes a new model takes: of regions/train.json, else of any store of the data's (an IGLUE
        # task folder has a store per split and language, regions/train.en.json)
        base = os.path.dirname(self.region_manifest("train"))
        found = [self.region_manifest("train")] if os.path.exists(self.region_manifest("train")) else \
            sorted(os.path.join(base, f) for f in os.listdir(base) if f.endswith(".json")) if os.path.isdir(base) else []
        if found:
            store = self.store_at(found[0])
            self.region_feat_dim, self.num_region_classes = store.feat_dim, store.num_classes

    @classmethod
    def load_dictionary(cls, path):
        return load_dictionary(path)

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        paths = utils.split_paths(cfg.data)
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

    # ---- validation: the task's own dev metric -------------------------------------------------------
    def build_dev_metric(self):
        """The hook (see the module's docstring): the metric validation reports beside the loss, or None.
        Generation tasks: BLEU-4 with --eval-bleu."""
        if self.model_kind == checkpoints.GENERATION and getattr(self.cfg, "eval_bleu", False):
            return GenerationBleu(self, self.cfg.eval_bleu_args)
        return None

    @property
    def dev_metric(self):
        if self._dev_metric is False:
            self._dev_metric = self.build_dev_metric()
        return self._dev_metric

    def begin_valid_epoch(self, epoch, model):
        super().begin_valid_epoch(epoch, model)
        if self.dev_metric is not None:
            self.dev_metric.begin_validation()

    def valid_step(self, sample, model, criterion):
        metric = self.dev_metric
        if metric is not None and metric.owns(sample):  # the metric's own batch: no loss to compute
            model.eval()
            with torch.no_grad():
                return torch.zeros(()), 0, dict(metric.batch_stats(model, sample), ntokens=sample["ntokens"],
                                                nsentences=sample["nsentences"], sample_size=0)
        loss, sample_size, log = super().valid_step(sample, model, criterion)
        if metric is not None:
            with torch.no_grad():
                log.update(metric.batch_stats(model, sample))
        return loss, sample_size, log

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        if self.dev_metric is not None:
            self.dev_metric.reduce(summer(logging_outputs))

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None,
                           ignore_invalid_inputs=False, required_batch_size_multiple=1, seed=1, num_shards=1,
                           shard_id=0, num_workers=0, epoch=1, data_buffer_size=0, disable_iterator_cache=False,
                           skip_remainder_batch=False, grouped_shuffling=False, update_epoch_batch_itr=False):
        if isinstance(dataset, MultitaskDataset):
            return self.grouped_batch_iterator(dataset, max_tokens, max_sentences, required_batch_size_multiple,
                                               seed, num_shards, shard_id, num_workers, epoch, skip_remainder_batch)
        # fairseq drops a last batch short of --required-batch-size-multiple (8 by default): fairseq-generate
        # and fairseq-validate would skip up to 7 test items (fairseq issue 5036). Evaluation sees every item.
        if dataset is not self.datasets.get("train"):
            required_batch_size_multiple = 1
        # Regions are read with h5py. In fairseq's prefetch thread (data_buffer_size > 0) a read can still hold
        # h5py's lock when the interpreter exits, and the exit then deadlocks: read in the calling thread
        # instead (--num-workers still parallelizes loading).
        return super().get_batch_iterator(
            dataset, max_tokens, max_sentences, max_positions, ignore_invalid_inputs, required_batch_size_multiple,
            seed, num_shards, shard_id, num_workers, epoch, 0, disable_iterator_cache, skip_remainder_batch,
            grouped_shuffling, update_epoch_batch_itr)

    def grouped_batch_iterator(self, dataset, max_tokens, max_sentences, required_batch_size_multiple, seed,
                               num_shards, shard_id, num_workers, epoch, skip_remainder_batch):
        """Batches of a MultitaskDataset, each from one of its datasets (objectives; in validation, query batches
        too), laid out so that every worker and every --update-freq micro-batch of a step draw from the same one."""
        dataset.set_epoch(epoch)
        if dataset.split != "train":
            required_batch_size_multiple = 1  # evaluation sees every item (get_batch_iterator)
        # all micro-batches of one update on every worker come from one objective
        mult_rate = max(getattr(self.cfg, "update_freq", None) or [1]) if dataset.split == "train" else 1
        step = mult_rate * num_shards
        batch_samplers = []
        with data_utils.numpy_seed(seed + epoch):
            for k, d in enumerate(dataset.datasets):
                indices = dataset.ordered_indices_of(k)
                if hasattr(d, "batches"):  # a dataset that lays its batches out itself (retrieval queries)
                    batches = d.batches(indices - dataset.offsets[k], max_sentences, step)
                    batches = [b + dataset.offsets[k] for b in batches]
                else:
                    batches = dataset.batch_by_size(indices, max_tokens=max_tokens, max_sentences=max_sentences,
                                                    required_batch_size_multiple=required_batch_size_multiple)
                batch_samplers.append(batches)
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

    # ---- models ------------------------------------------------------------------------------------
    def build_model(self, cfg, from_checkpoint=False, prepare=None):
        """The task's model, of ``self.model_kind``: a new generation model takes the data's languages
        unless --langs says otherwise; with --pretrained-checkpoint (fine-tuning starts, not a fine-tuned
        checkpoint loaded for evaluation) the model takes what the checkpoint fixes and its weights.
        ``prepare(model)`` adds the task's heads before the weights load."""
        kind, name = self.model_kind, self.cfg._name
        path = getattr(self.cfg, "pretrained_checkpoint", None)
        state = None
        if path and not from_checkpoint:
            state, model_cfg = checkpoints.load_checkpoint_of_kind(
                path, kind, f"{name} fine-tunes {checkpoints.describe(kind)}",
                "pre-trained checkpoint not found (--pretrained-checkpoint)")
            checkpoints.inherit_model_args(cfg, model_cfg, kind, path)
        if checkpoints.kind_of_cfg(cfg)[0] == checkpoints.GENERATION and not split_list(getattr(cfg, "langs", None)):
            langs = self.data_languages()
            if not langs:
                raise M3PInputError(f"{self.data_path()}: no text/ or captions/ languages to build the language "
                                    f"embedding from")
            cfg.langs = ",".join(langs)
        model = super().build_model(cfg, from_checkpoint)
        checkpoints.require_kind(model, kind, cfg, name)
        self.model_langs = checkpoints.model_langs(model) or None
        if prepare is not None:
            prepare(model)
        if state is not None:
            checkpoints.load_pretrained_weights(model, state, path)
        return model

    # ---- data --------------------------------------------------------------------------------------
    def data_path(self, epoch=1):
        paths = utils.split_paths(self.cfg.data)
        return paths[(epoch - 1) % len(paths)]

    def data_languages(self):
        """Every language with text, captions or parallel text in the data folder, sorted."""
        langs = set()
        for kind in ("text", "captions", "parallel"):
            folder = os.path.join(self.data_path(), kind)
            if os.path.isdir(folder):
                langs.update(l for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))
                             for l in d.split("-"))  # parallel/: one folder per language pair, en-de
        return sorted(langs)

    def lang_name(self, lang_id):
        """The language of an id of the model's language embedding (lang_id's inverse)."""
        return (self.model_langs or self.data_languages())[lang_id]

    def lang_id(self, lang):
        """A language's id in the model's language embedding (a new model's: the data's languages)."""
        langs = self.model_langs or self.data_languages()
        if lang not in langs:
            raise M3PInputError(f"language {lang!r} is not one of the model's languages (--langs {','.join(langs)})")
        return langs.index(lang)

    def folder_langs(self, option, folder, what):
        """``option``'s languages (a comma-separated flag), else every language folder under DATA/``folder``."""
        langs = split_list(option)
        path = os.path.join(self.data_path(), folder)
        if not langs and os.path.isdir(path):
            langs = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
        if not langs:
            raise M3PDataError(f"{path}: no {what} languages")
        for lang in langs:
            if not os.path.isdir(os.path.join(path, lang)):
                raise M3PDataError(f"{os.path.join(path, lang)}: no {what} for language {lang!r}")
        return langs

    def region_manifest(self, split, lang=None):
        """``regions/{split}.json``; with ``lang``, the language's own store ``regions/{split}.{lang}.json``
        where there is one (IGLUE: MaRVL's images differ per language)."""
        base = self.cfg.regions_dir or os.path.join(self.data_path(), "regions")
        own = os.path.join(base, f"{split}.{lang}.json") if lang else None
        return own if own and os.path.exists(own) else os.path.join(base, f"{split}.json")

    def region_store(self, split, lang=None) -> RegionStore:
        return self.store_at(self.region_manifest(split, lang))

    def store_at(self, manifest) -> RegionStore:
        """The region store of a manifest, opened once per task."""
        if manifest not in self._stores:
            self._stores[manifest] = RegionStore(manifest, cache_mb=self.cfg.region_cache_mb)
        return self._stores[manifest]

    def load_tokens(self, prefix, what):
        ds = data_utils.load_indexed_dataset(prefix, self.dictionary, combine=False)
        if ds is None:
            raise M3PDataError(f"{prefix}.bin: {what} not found")
        return ds

    def check_text(self, prefix, lines, what):
        """Every line of ``prefix.bin`` holds text and fits --tokens-per-sample with the ``<s>`` put in front."""
        sizes = np.asarray(lines.sizes)
        empty = np.nonzero(sizes <= 1)[0]  # </s> only
        if len(empty):
            raise M3PDataError(f"{prefix}.bin: line {empty[0] + 1} is an empty {what}")
        too_long = np.nonzero(sizes + 1 > self.cfg.tokens_per_sample)[0]
        if len(too_long):
            raise M3PDataError(f"{prefix}.bin: line {too_long[0] + 1} has {sizes[too_long[0]] + 1} tokens, "
                               f"more than --tokens-per-sample {self.cfg.tokens_per_sample}")

    def load_captions(self, lang, split, negatives=False):
        """Captions of one language with their image rows; checks every line (and, for ``negatives``,
        that they belong to two images or more)."""
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
        self.check_text(prefix, captions, "caption")
        try:
            rows = self.region_store(split).indices_of(ids, source=ids_path)
        except RegionDataError as e:
            raise M3PDataError(str(e))
        if negatives:
            require_two_images(rows, ids_path, self.region_store(split))
        # <s> caption </s>, as XLM-R sees a sentence
        return PrependTokenDataset(captions, self.dictionary.bos()), rows

    def region_dataset(self, split, lang=None):
        try:
            return RegionDataset(self.region_store(split, lang), max_regions=self.cfg.max_regions)
        except RegionDataError as e:
            raise M3PDataError(str(e))

    def apply_mask(self, dataset, seed):
        return MaskTokensDataset.apply_mask(
            dataset, self.dictionary, pad_idx=self.dictionary.pad(), mask_idx=self.mask_idx, seed=seed,
            mask_prob=self.cfg.mask_prob, leave_unmasked_prob=self.cfg.leave_unmasked_prob,
            random_token_prob=self.cfg.random_token_prob)

    def caption_generation(self, split, seed, zero_spans=False, langs=None):
        """Captions to decode from their images (IC; DIC with ``zero_spans``), every language in ``langs``
        (default --caption-langs), each caption with its language id."""
        caps, rows, ids = [], [], []
        for lang in langs or split_list(self.cfg.caption_langs):
            c, r = self.load_captions(lang, split)
            caps.append(c)
            rows.append(r)
            ids.append(np.full(len(c), self.lang_id(lang)))
        captions = caps[0] if len(caps) == 1 else ConcatDataset(caps)
        return CaptionGenerationDataset(captions, np.concatenate(rows), np.concatenate(ids), self.region_dataset(split),
                                        self.dictionary, zero_spans=zero_spans, seed=seed,
                                        dic_mask_ratio=getattr(self.cfg, "dic_mask_ratio", 0.3),
                                        dic_poisson_lambda=getattr(self.cfg, "dic_poisson_lambda", 3.0))

    def code_switch_tables(self):
        """{lang: english word -> its encoded translations}, from the dictionaries --code-switch reads (built once)."""
        cfg = self.cfg
        if self._code_switch_tables is None:
            dicts = find_dictionaries(self.data_path(), cfg.code_switch_dicts, split_list(cfg.code_switch_langs) or None)
            self._code_switch_tables = build_tables(dicts, self.dictionary,
                                                    os.path.join(self.data_path(), "sentencepiece.bpe.model"))
            if not any(self._code_switch_tables.values()):
                raise M3PInputError(f"{', '.join(dicts.values())}: no dictionary entry could be encoded")
        return self._code_switch_tables

    def code_switch_table(self):
        """english word -> its encoded translations in every language of --code-switch."""
        if self._code_switch_merged is None:
            self._code_switch_merged = merge_tables(self.code_switch_tables())
        return self._code_switch_merged

    def code_switched(self, captions, lang, split, seed, same_word_same_way=False):
        """English training texts (captions; XNLI's sentence pairs with ``same_word_same_way``) code-switched when
        --code-switch is on (CodeSwitchConfig); else unchanged."""
        cfg = self.cfg
        if not getattr(cfg, "code_switch", False) or lang != "en" or split != "train":
            return captions
        if getattr(cfg, "code_switch_one_language", False):
            raise M3PInputError("--code-switch-one-language switches source-target pairs (NTG), not single texts")
        return CodeSwitchDataset(captions, self.dictionary, self.code_switch_table(), cfg.code_switch_sentence_ratio,
                                 cfg.code_switch_word_ratio, seed=seed, max_tokens=cfg.tokens_per_sample,
                                 same_word_same_way=same_word_same_way)

    def code_switched_pairs(self, items, split, seed):
        """Source-target training items whose source is English (NTG) switched together when --code-switch is on:
        a word the body has is switched the same way in the title (data/code_switch.code_switch_pair)."""
        cfg = self.cfg
        if not getattr(cfg, "code_switch", False) or split != "train":
            return items
        into = {self.lang_id(lang): table for lang, table in self.code_switch_tables().items()
                if table} if cfg.code_switch_one_language else None
        return CodeSwitchPairDataset(items, self.dictionary, self.code_switch_table(), self.lang_id("en"), into=into,
                                     sentence_ratio=cfg.code_switch_sentence_ratio, word_ratio=cfg.code_switch_word_ratio,
                                     seed=seed, max_tokens=cfg.tokens_per_sample)

