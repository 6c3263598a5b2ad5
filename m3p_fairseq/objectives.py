"""M3P's pre-training objectives, one spec each: the single list every module reads.

A spec says which model kind it trains, which data it reads and how its dataset is built, its
natural size (what an epoch holds when no ``--objective-ratios`` are given), how its loss is
computed from a batch, and which metrics it logs. The pre-training task builds its datasets from
the specs (tasks/multitask_multimodal.py), the criterions dispatch on them (criterions/), the plots
draw their loss curves from them (evaluation/plots.py). A new objective is one spec here plus
its dataset class under data/.

Randomness: every objective draws from its own stream (``stream_seed``: ``--seed`` and the
objective's name), for its masking or noising, its negatives and its language and ratio
resampling, so adding or reordering objectives changes no other objective's draws.

Units: every cross-entropy is logged in bits (fairseq's convention for ``loss``); MRM's regression
term ``mrm_mse`` is a mean squared error. Losses are sums over the batch, so fairseq divides by
the sample size the objective reports.
"""
import functools
import math
import os
import zlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from fairseq import metrics, modules, utils
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.data import (
    AppendTokenDataset,
    ConcatDataset,
    ConcatSentencesDataset,
    IdDataset,
    NestedDictionaryDataset,
    NumelDataset,
    NumSamplesDataset,
    PrependTokenDataset,
    RawLabelDataset,
    ResamplingDataset,
    RightPadDataset,
    StripTokenDataset,
    TokenBlockDataset,
    TruncateDataset,
)

from .checkpoints import GENERATION, UNDERSTANDING
from .data.iglue_dataset import IGLUE_JOBS, iglue_dataset
from .data.image_caption_dataset import ImageCaptionDataset
from .data.multitask import alpha_sampling_probs, resample_to_probs
from .data.ntg_dataset import ntg_dataset
from .data.parallel import PairSegmentsDataset
from .data.retrieval_dataset import retrieval_pairs
from .data.text_items import text_items
from .data.xdae_dataset import XDAEDataset
from .data.xnli_dataset import XNLI_HEAD, XNLI_LABELS, xnli_dataset
from .errors import M3PInputError
from .models.dual_encoder import add_dual_heads, contrastive_loss, embed_images, embed_text, has_dual_heads
from .models.iglue_heads import add_iglue_head
from .utils import split_list

LN2 = math.log(2)
# what an objective reads: the multilingual corpus and translation pairs (both sampled per language or
# language pair with --alpha), image-caption pairs
TEXT, PARALLEL, PAIRS = "text", "parallel", "pairs"
TCL_HEAD = "tcl"  # the sentence-embedding projection of the translation contrastive objective


def stream_seed(seed, name):
    """The random stream of objective ``name`` under ``--seed``: stable across runs and objective lists."""
    return seed + zlib.crc32(name.encode()) % 1_000_003


@dataclass(frozen=True)
class Objective:
    name: str
    kind: str  # checkpoints.UNDERSTANDING / GENERATION: the model it trains
    source: str  # TEXT / PAIRS
    load: Callable  # (task, split, epoch, seed) -> per-language datasets (TEXT) or one dataset (PAIRS)
    finish: Callable  # (task, loaded, split, epoch, seed, scale) -> the dataset fairseq batches
    loss: Callable  # (criterion, model, sample) -> (loss, sample_size, logging output)
    reduce: Callable  # (name, total) -> logs the objective's metrics (total: key -> summed value)
    plot_keys: Tuple[str, ...]
    prepare: Optional[Callable] = None  # (task, model): heads the objective needs, added when the model is built

    def natural_size(self, loaded):
        return len(loaded) if self.source == PAIRS else sum(len(d) for d in loaded)


# ---- datasets --------------------------------------------------------------------------------------

def _text_blocks(task, split, epoch, seed):
    """xMLM, per language: text cut into blocks of at most tokens_per_sample - 1 pieces, <s> in front."""
    blocks = []
    for lang in task.text_langs():
        ds = task.load_tokens(os.path.join(task.data_path(epoch), "text", lang, split), f"{lang} {split} text")
        if task.cfg.sample_break_mode == "eos":
            # a line is a sample already (fairseq-preprocess ends each with </s>); TokenBlockDataset's
            # eos mode uses np.compat, gone in numpy 2
            ds = TruncateDataset(ds, task.cfg.tokens_per_sample - 1)
        else:
            ds = TokenBlockDataset(ds, ds.sizes, task.cfg.tokens_per_sample - 1, pad=task.dictionary.pad(),
                                   eos=task.dictionary.eos(), break_mode=task.cfg.sample_break_mode)
        blocks.append(PrependTokenDataset(ds, task.dictionary.bos()))
    return blocks


def _text_sentences(task, split, epoch, seed):
    """xDAE, per language: one sentence (corpus line) per item, ``<s> ... </s>``, cut to
    --tokens-per-sample. xDAE denoises sentences, as the reference's DAE does, not xMLM's blocks."""
    out = []
    for lang in task.text_langs():
        ds = task.load_tokens(os.path.join(task.data_path(epoch), "text", lang, split), f"{lang} {split} text")
        # cut the text, not its </s>: strip it, truncate, put it back, then <s> in front
        ds = TruncateDataset(StripTokenDataset(ds, task.dictionary.eos()), task.cfg.tokens_per_sample - 2)
        out.append(PrependTokenDataset(AppendTokenDataset(ds, task.dictionary.eos()), task.dictionary.bos()))
    return out


def _language_sampled(task, per_lang, split, epoch, seed, scale, *langs):
    """Languages (or language pairs) alpha-sampled (training only: p_l ∝ n_l^alpha), concatenated; with, for
    each list of ``langs`` (default: the text corpus's languages), every item's language id."""
    if split == "train":
        per_lang = resample_to_probs(per_lang, alpha_sampling_probs([len(d) for d in per_lang], task.cfg.alpha),
                                     seed, epoch, scale)
    text = ConcatDataset(per_lang) if len(per_lang) > 1 else per_lang[0]
    sizes = [len(d) for d in per_lang]
    return (text, *(np.repeat([task.lang_id(l) for l in names], sizes) for names in langs or [task.text_langs()]))


def _translation_pairs(task, split, epoch, seed):
    """Per language pair of --parallel-pairs: ``<s> src </s></s> tgt </s>``, each side cut to half the budget."""
    half = task.cfg.tokens_per_sample // 2
    out = []
    for src, tgt in task.parallel_pairs():
        a, b = task.load_translations(src, tgt, split)
        out.append(ConcatSentencesDataset(
            PrependTokenDataset(_cut(task, a, half - 1), task.dictionary.bos()),
            PrependTokenDataset(_cut(task, b, half - 1), task.dictionary.eos())))
    return out


def _cut(task, ds, n):
    """The sentence cut to n tokens, its </s> kept."""
    eos = task.dictionary.eos()
    return AppendTokenDataset(TruncateDataset(StripTokenDataset(ds, eos), n - 1), eos)


def _masked_translations(task, per_pair, split, epoch, seed, scale):
    """TLM: language-pair-sampled pairs masked as xMLM over both sentences, positions restarting at the
    second, each token with its language."""
    pairs = task.parallel_pairs()
    text, first, second = _language_sampled(task, per_pair, split, epoch, seed, scale, [s for s, _ in pairs],
                                            [t for _, t in pairs])
    src, tgt = task.apply_mask(text, seed)
    pad, eos = task.dictionary.pad(), task.dictionary.eos()
    return text_items(src, RightPadDataset(tgt, pad_idx=pad), pad,
                      src_positions=RightPadDataset(PairSegmentsDataset(text, eos, pad), pad_idx=pad),
                      src_lang=RightPadDataset(PairSegmentsDataset(text, eos, pad, first, second, "langs"), pad_idx=0))


def _translation_views(task, split, epoch, seed):
    """TCL, per language pair: the two sentences of a pair as two separate inputs, and the pair's identity."""
    out, offset = [], 0
    pad, budget = task.dictionary.pad(), task.cfg.tokens_per_sample
    for src, tgt in task.parallel_pairs():
        a, b = task.load_translations(src, tgt, split)
        a, b = (PrependTokenDataset(_cut(task, d, budget - 1), task.dictionary.bos()) for d in (a, b))
        out.append(NestedDictionaryDataset(
            {
                "id": IdDataset(),
                "net_input": {"src_tokens": RightPadDataset(a, pad_idx=pad),
                              "src_lang": RawLabelDataset([task.lang_id(src)] * len(a))},
                "other_view": {"src_tokens": RightPadDataset(b, pad_idx=pad),
                               "src_lang": RawLabelDataset([task.lang_id(tgt)] * len(b))},
                # duplicates of a pair (resampling draws with replacement) are not each other's negatives
                "pair_id": RawLabelDataset(list(range(offset, offset + len(a)))),
                "nsentences": NumSamplesDataset(),
                "ntokens": NumelDataset(a, reduce=True),
            },
            sizes=[np.maximum(a.sizes, b.sizes)],
        ))
        offset += len(a)
    return out


def _sampled_views(task, per_pair, split, epoch, seed, scale):
    return _language_sampled(task, per_pair, split, epoch, seed, scale, [s for s, _ in task.parallel_pairs()])[0]


def _add_tcl_head(task, model):
    if TCL_HEAD not in model.classification_heads:
        model.register_classification_head(TCL_HEAD, num_classes=task.cfg.tcl_dim)


def _masked_text(task, per_lang, split, epoch, seed, scale):
    """xMLM: language-sampled text masked as XLM-R (15%: 80% <mask>, 10% random, 10% kept)."""
    text, ids = _language_sampled(task, per_lang, split, epoch, seed, scale)
    src, tgt = task.apply_mask(text, seed)
    pad = task.dictionary.pad()
    # (the model adds a language embedding only if it has one, --langs)
    return text_items(src, RightPadDataset(tgt, pad_idx=pad), pad, src_lang=RawLabelDataset(ids.tolist()))


def _noised_text(task, per_lang, split, epoch, seed, scale):
    """xDAE: language-sampled sentences, shuffled, words dropped, spans masked."""
    text, ids = _language_sampled(task, per_lang, split, epoch, seed, scale)
    cfg = task.cfg
    return XDAEDataset(text, ids, task.dictionary, seed, shuffle_distance=cfg.xdae_shuffle_distance,
                       drop_prob=cfg.xdae_drop_prob, mask_ratio=cfg.xdae_mask_ratio,
                       poisson_lambda=cfg.xdae_poisson_lambda, mask_idx=task.mask_idx)


def _pairs(name):
    """MMLM / MRM / VLM over the captions of --caption-langs (code-switched with --code-switch)."""

    def load(task, split, epoch, seed):
        caps, rows = [], []
        for lang in split_list(task.cfg.caption_langs):
            c, r = task.load_captions(lang, split, negatives=name == "vlm" and task.cfg.vlm_negative_prob > 0)
            caps.append(task.code_switched(c, lang, split, seed))  # before MMLM masks it
            rows.append(r)
        captions = ConcatDataset(caps) if len(caps) > 1 else caps[0]
        kw = {}
        if name == "mmlm":
            kw["masked_source"], kw["masked_target"] = task.apply_mask(captions, seed)
        cfg = task.cfg
        return ImageCaptionDataset(captions, np.concatenate(rows), task.region_dataset(split), task.dictionary.pad(),
                                   name, seed=seed, mrm_prob=cfg.mrm_prob, mrm_zero_prob=cfg.mrm_zero_prob,
                                   vlm_negative_prob=cfg.vlm_negative_prob,
                                   vlm_text_negative_prob=cfg.vlm_text_negative_prob, **kw)

    return load


def _captions_to_generate(zero_spans):
    """IC (regions as they are) / DIC (spans of regions zeroed) over the captions of --caption-langs."""

    def load(task, split, epoch, seed):
        return task.caption_generation(split, seed, zero_spans=zero_spans)

    return load


def _retrieval_pairs(task, split, epoch, seed):
    """Retrieval fine-tuning as an objective: each caption of --caption-langs with its image and
    --num-negatives negatives (RetrievalDataConfig), so that it mixes with others per update."""
    return retrieval_pairs(task, split, split_list(task.cfg.caption_langs), seed)


def add_retrieval_heads(task, model):
    """What a retrieval model needs beside the VLM head: the dual encoder's heads (--dual-dim; 0: none)."""
    add_dual_heads(model, task.cfg.dual_dim)


def _xnli_pairs(task, split, epoch, seed):
    """XNLI fine-tuning as an objective: the sentence pairs of --train-langs (the m3p_xnli task's), so that it
    mixes with others per update (English XNLI with TCL kept on)."""
    return xnli_dataset(task, split, split_list(task.cfg.train_langs), seed, epoch)


def _add_xnli_head(task, model):
    if XNLI_HEAD not in model.classification_heads:
        model.register_classification_head(XNLI_HEAD, num_classes=len(XNLI_LABELS))


def _ntg_items(task, split, epoch, seed):
    """NTG fine-tuning as an objective: the news items of --train-langs (the m3p_ntg task's)."""
    return ntg_dataset(task, split, split_list(task.cfg.train_langs), seed)


def _iglue_examples(task, split, epoch, seed, name):
    """An IGLUE job as an objective (xvnli, xgqa, marvl): the m3p_{name} task's examples of --train-langs, so that
    English fine-tuning mixes with pre-training objectives per update (IGLUE with TCL kept on)."""
    job = IGLUE_JOBS[name]
    return iglue_dataset(task, job, job.labels(task.data_path()), split, split_list(task.cfg.train_langs), seed)


def _add_iglue_head(task, model, name):
    job = IGLUE_JOBS[name]
    add_iglue_head(model, name, job.head_kind, len(job.labels(task.data_path())))


def _resampled(task, dataset, split, epoch, seed, scale):
    """A dataset resampled to its share of the updates (--objective-ratios), else as it is."""
    if scale == 1.0:
        return dataset
    # fairseq's ResamplingDataset can order by size only a dataset whose sizes are one array; a
    # NestedDictionaryDataset's (XNLI's items) are a list, and are kept in the resampled (random) order
    by_size = not isinstance(dataset.sizes, (list, tuple))
    return ResamplingDataset(dataset, size_ratio=scale, seed=seed, epoch=epoch, replace=scale >= 1.0,
                             batch_by_size=by_size)


# ---- losses ----------------------------------------------------------------------------------------

def masked_lm_loss(logits, targets, pad_idx):
    """Summed cross-entropy (nats) of the selected positions' logits against their targets (pads weigh nothing)."""
    return modules.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), reduction="sum",
                                 ignore_index=pad_idx)


def mrm_losses(pred_feat, pred_cls, feat_target, cls_target):
    """The paper's MRM: MSE(FC(h), raw feature) (mean over feature dims, summed over regions)
    and CE(FC(h), the detector's top-1 class) in nats, both summed over masked regions."""
    mse = F.mse_loss(pred_feat.float(), feat_target.float(), reduction="none").mean(-1).sum()
    ce = F.cross_entropy(pred_cls.float(), cls_target, reduction="sum")
    return mse, ce


def vlm_loss(logits, labels):
    """Binary cross-entropy (nats) of match / no match, summed."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum")


def _masked_lm_step(criterion, model, sample):
    name = sample["objective"]
    masked = sample["target"].ne(criterion.pad_idx)
    n = masked.sum()
    # nothing masked (a dummy batch): score every position instead, the pad targets weigh nothing, and every
    # parameter stays in the graph (DDP needs it); torch.where decides on the device, without a host sync
    selected = torch.where(masked.any(), masked, masked.new_ones(()))
    out = model(**sample["net_input"], masked_tokens=selected, read_only=True)
    target = sample["target"][selected]
    loss = masked_lm_loss(out["lm_logits"], target, criterion.pad_idx)
    with torch.no_grad():
        ncorrect = ((out["lm_logits"].argmax(-1) == target) & target.ne(criterion.pad_idx)).sum()
    return loss, n, {f"{name}_loss": loss.data, f"{name}_n": n, f"{name}_ncorrect": ncorrect}


def _mrm_step(criterion, model, sample):
    masked = sample["masked_regions"]
    n = masked.sum()
    out = model(**sample["net_input"], masked_regions=masked, read_only=True)
    mse, ce = mrm_losses(out["mrm_feat"], out["mrm_cls"], sample["mrm_feat_target"], sample["mrm_cls_target"])
    loss = criterion.mrm_feat_weight * mse + criterion.mrm_cls_weight * ce + out["features"].sum() * 0.0
    with torch.no_grad():
        ncorrect = (out["mrm_cls"].argmax(-1) == sample["mrm_cls_target"]).sum()
    return loss, n, {"mrm_loss": loss.data, "mrm_mse": mse.data, "mrm_ce": ce.data, "mrm_n": n,
                     "mrm_ncorrect": ncorrect}


def _vlm_step(criterion, model, sample):
    out = model(**sample["net_input"], vlm=True, read_only=True)
    labels = sample["vlm_target"]
    loss = vlm_loss(out["vlm_logits"], labels)
    with torch.no_grad():
        ncorrect = ((out["vlm_logits"] > 0).float() == labels).sum()
    return loss, labels.numel(), {"vlm_loss": loss.data, "vlm_n": labels.numel(), "vlm_ncorrect": ncorrect}


def _sentence_embeddings(model, src_tokens, src_lang):
    """Unit vectors of the TCL head over the text encoder's first position, one per sentence."""
    first = model.encoder.read_positions(src_tokens, first=True)  # the head pools position 0 alone
    x, _ = model.encoder.extract_features(src_tokens, src_lang=src_lang, positions=first)
    return F.normalize(model.classification_heads[TCL_HEAD](x).float(), dim=-1)


def _tcl_step(criterion, model, sample):
    """CCLM's cross-view contrastive loss on translation pairs: the two sentences' embeddings pulled together
    against the batch's other pairs (symmetric InfoNCE, summed over pairs)."""
    a = _sentence_embeddings(model, **sample["net_input"])
    b = _sentence_embeddings(model, **sample["other_view"])
    loss, ncorrect = contrastive_loss(a, b, sample["pair_id"], criterion.tcl_temperature)
    n = len(sample["pair_id"])
    return loss, n, {"tcl_loss": loss.data, "tcl_n": n, "tcl_ncorrect": ncorrect}


@dataclass
class RetrievalLossConfig(FairseqDataclass):
    """The retrieval loss's options: of the m3p_retrieval criterion and of the ``ret`` objective's."""

    contrastive_weight: float = field(default=1.0, metadata={
        "help": "weight of the dual encoder's in-batch contrastive loss (per pair, as the VLM loss); "
                "0 trains the cross-encoder alone"})
    temperature: float = field(default=0.05, metadata={"help": "softmax temperature of the contrastive loss"})
    hard_negatives: int = field(default=0, metadata={
        "help": "training negatives per positive mined in the batch by the dual encoder, on top of the task's "
                "--num-negatives random ones: half replace the image, half the text, each drawn from the "
                "softmax of the dual similarities (ALBEF's sampling); 0 (default): the paper's random negatives only"})


class RetrievalLoss:
    """Retrieval's loss, for the criterions that train it (m3p_retrieval; m3p_pretrain's ``ret`` batches):
    BCE of the VLM head over positives and sampled negatives, plus the dual encoder's InfoNCE.

    The loss is a sum over the batch's pairs (sample_size = pairs): the contrastive loss, computed
    once per positive, is scaled by pairs per positive so that ``contrastive_weight`` weighs it per
    pair, as the VLM term.

    The contrastive term also gets the cross-encoder going: fine-tuning m3p_tiny from a pre-training
    whose VLM head is still at chance (embedded world, batch 32, lr 5e-4), BCE alone kept predicting
    the 1:3 match rate for 400 updates, while with the contrastive term the VLM head left it after
    ~250 updates (measured; the dual encoder improves first, the cross-encoder follows).
    """

    def init_retrieval_loss(self, contrastive_weight, temperature, hard_negatives):
        if hard_negatives < 0:
            raise M3PInputError(f"--hard-negatives {hard_negatives}: must be >= 0")
        self.contrastive_weight, self.temperature, self.hard_negatives = contrastive_weight, temperature, hard_negatives

    def retrieval_step(self, model, sample, prefix=""):
        """(loss, pairs, log); the log's keys ``{prefix}vlm_*`` and ``{prefix}nce_*``."""
        net_input, labels = sample["net_input"], sample["vlm_target"]
        dual = sample.get("dual")
        mine = self.hard_negatives > 0 and model.training and dual is not None
        if mine and not has_dual_heads(model):
            raise M3PInputError("--hard-negatives needs the dual encoder's heads (--dual-dim > 0)")
        log, nce = {}, None
        if dual is not None and has_dual_heads(model) and (self.contrastive_weight > 0 or mine):
            idx = dual["pair_index"]
            text = embed_text(model, dual["src_tokens"])
            image = embed_images(model, net_input["regions"][idx], net_input["region_boxes"][idx],
                                 net_input["region_padding_mask"][idx], self.task.source_dictionary.bos())
            if self.contrastive_weight > 0:
                nce, nce_correct = contrastive_loss(text, image, dual["image_rows"], self.temperature)
                log.update({f"{prefix}nce_loss": nce.data, f"{prefix}nce_n": len(idx),
                            f"{prefix}nce_ncorrect": nce_correct})
            if mine:
                net_input, labels = self.add_hard_negatives(net_input, labels, idx, text.detach(), image.detach(),
                                                            dual["image_rows"])
        out = model(**net_input, vlm=True, read_only=True)
        loss = vlm_loss(out["vlm_logits"], labels)
        n = labels.numel()
        with torch.no_grad():
            ncorrect = ((out["vlm_logits"] > 0).float() == labels).sum()
        log.update({f"{prefix}vlm_loss": loss.data, f"{prefix}vlm_n": n, f"{prefix}vlm_ncorrect": ncorrect})
        if nce is not None:
            loss = loss + self.contrastive_weight * (n / len(dual["pair_index"])) * nce
        return loss, n, log

    def add_hard_negatives(self, net_input, labels, idx, text, image, rows):
        """The cross-encoder's batch plus mined negatives: for positive i, images j (and captions j) drawn
        with probability softmax(sim / T) over the batch's other images; a pair of the same image is never
        a negative. ``idx``: the positives' places in the batch; text/image: their dual embeddings."""
        sim = text @ image.t() / self.temperature  # caption i x image j
        other = rows[:, None] != rows[None, :]
        keep = other.any(dim=1)  # a positive whose batch holds no other image gets no mined negative
        if not bool(keep.any()):
            return net_input, labels
        n_image = (self.hard_negatives + 1) // 2
        n_text = self.hard_negatives - n_image
        pos = torch.nonzero(keep).squeeze(1)
        caption_side, image_side = [], []  # batch places of each new pair's text and regions
        for k, scores, replace_image in ((n_image, sim, True), (n_text, sim.t(), False)):
            if k == 0:
                continue
            # row p: the kept side is positive pos[p]; sample the replaced side among the other images
            w = torch.softmax(scores[pos].float().masked_fill(~other[pos], float("-inf")), dim=1)
            drawn = idx[torch.multinomial(w, k, replacement=True)].reshape(-1)
            kept = idx[pos].repeat_interleave(k)
            caption_side.append(kept if replace_image else drawn)
            image_side.append(drawn if replace_image else kept)
        t, r = torch.cat(caption_side), torch.cat(image_side)
        grown = dict(net_input)
        grown["src_tokens"] = torch.cat([net_input["src_tokens"], net_input["src_tokens"][t]])
        if "src_lengths" in net_input:
            grown["src_lengths"] = torch.cat([net_input["src_lengths"], net_input["src_lengths"][t]])
        for key in ("regions", "region_boxes", "region_padding_mask"):
            grown[key] = torch.cat([net_input[key], net_input[key][r]])
        return grown, torch.cat([labels, labels.new_zeros(len(t))])


def xnli_logits(model, net_input):
    """The XNLI head's logits over the first position of ``<s> premise </s></s> hypothesis </s>``."""
    return model(**net_input, classification_head_name=XNLI_HEAD, read_only=True)["classification"]


def _xnli_step(criterion, model, sample):
    """Cross-entropy (nats, summed) of the three classes, as the m3p_classification criterion's."""
    logits = xnli_logits(model, sample["net_input"])
    target = sample["target"].view(-1)
    loss = F.cross_entropy(logits.float(), target, reduction="sum")
    with torch.no_grad():
        ncorrect = (logits.argmax(-1) == target).sum()
    return loss, target.numel(), {"xnli_loss": loss.data, "xnli_n": target.numel(), "xnli_ncorrect": ncorrect}


CLASSIFICATION_LOSSES = ChoiceEnum(["ce", "bce"])


@dataclass
class IGLUELossConfig(FairseqDataclass):
    """The loss option of IGLUE's jobs: of the m3p_iglue criterion and of the xvnli / marvl objectives'."""

    classification_loss: CLASSIFICATION_LOSSES = field(default="ce", metadata={
        "help": "XVNLI / MaRVL loss: ce (softmax cross-entropy) or bce (volta's: BCE against the one-hot target, "
                "mean over classes); xGQA always uses BCE on its soft answer scores"})


def iglue_logits(model, head, net_input):
    """B x C logits of IGLUE head ``head`` (the job's name; its rows pooled and, for two images, paired)."""
    if head not in getattr(model, "classification_heads", {}):
        raise M3PInputError(f"the model has no {head} head: fine-tune it with --task m3p_{head} (or the {head} "
                            f"objective)")
    return model(**net_input, classification_head_name=head, read_only=True)["classification"]


def soft_score_loss(logits, scores):
    """Summed BCE-with-logits of B x A logits against B x A answer scores (nats)."""
    return F.binary_cross_entropy_with_logits(logits.float(), scores.float(), reduction="sum")


def class_loss(logits, target, kind="ce"):
    """Summed loss of B x C logits against B class indices: softmax cross-entropy (``ce``) or, as volta,
    BCE-with-logits against the one-hot target averaged over the C classes (``bce``), in nats."""
    if kind == "ce":
        return F.cross_entropy(logits.float(), target, reduction="sum")
    one_hot = F.one_hot(target, logits.size(-1)).float()
    return F.binary_cross_entropy_with_logits(logits.float(), one_hot, reduction="none").mean(-1).sum()


def num_correct(logits, target):
    """Correct examples of a batch: the arg-max class equals the gold one; for soft answer scores, the
    score of the arg-max answer (exact match when each question has one answer)."""
    pred = logits.argmax(-1)
    if target.dim() == 2:
        return target.gather(1, pred.unsqueeze(1)).sum()
    return (pred == target).sum()


def iglue_loss(model, head, sample, classification_loss="ce"):
    """(summed loss, examples, correct examples) of an IGLUE batch: soft answer scores (2-d targets, xGQA) by
    ``soft_score_loss``, classes by ``class_loss``."""
    logits = iglue_logits(model, head, sample["net_input"])
    target = sample["target"]
    loss = soft_score_loss(logits, target) if target.dim() == 2 else class_loss(logits, target, classification_loss)
    with torch.no_grad():
        ncorrect = num_correct(logits, target)
    return loss, target.size(0), ncorrect


def _iglue_step(criterion, model, sample):
    name = sample["objective"]
    loss, n, ncorrect = iglue_loss(model, name, sample, criterion.classification_loss)
    return loss, n, {f"{name}_loss": loss.data, f"{name}_n": n, f"{name}_ncorrect": ncorrect}


def _ret_step(criterion, model, sample):
    return criterion.retrieval_step(model, sample, "ret_")


def reduce_retrieval(prefix, total):
    """The cross-encoder's ``{prefix}vlm_loss/acc`` and the dual encoder's ``{prefix}nce_loss/acc``."""
    reduce_loss_and_accuracy(f"{prefix}vlm", total)
    reduce_loss_and_accuracy(f"{prefix}nce", total)


def generation_loss(lprobs, target, epsilon, pad_idx):
    """Summed label-smoothed NLL (nats) over non-pad target tokens: (loss, nll_loss, ncorrect)."""
    lprobs, target = lprobs.view(-1, lprobs.size(-1)), target.view(-1)
    loss, nll_loss = label_smoothed_nll_loss(lprobs, target, epsilon, ignore_index=pad_idx, reduce=True)
    with torch.no_grad():
        keep = target.ne(pad_idx)
        ncorrect = (lprobs.argmax(-1)[keep] == target[keep]).sum()
    return loss, nll_loss, ncorrect


def generation_step(criterion, model, sample):
    """Teacher-forced decoding of the target: xDAE, IC, DIC and the generation fine-tuning tasks.
    Returns (loss, sample_size, log): token counts and, for a pre-training batch, its objective's keys."""
    net_output = model(**sample["net_input"])
    lprobs = model.get_normalized_probs(net_output, log_probs=True)
    target = model.get_targets(sample, net_output)
    loss, nll_loss, ncorrect = generation_loss(lprobs, target, criterion.eps, criterion.pad_idx)
    ntokens = sample["ntokens"]
    log = {"nll_loss": nll_loss.data, "ncorrect": ncorrect}
    name = sample.get("objective")
    if name is not None:
        log.update({f"{name}_nll_loss": nll_loss.data, f"{name}_ntokens": ntokens, f"{name}_ncorrect": ncorrect})
    return loss, sample["nsentences"] if criterion.sentence_avg else ntokens, log


# ---- metrics ---------------------------------------------------------------------------------------

def log_token_metrics(total, prefix, count, loss, loss_out="loss"):
    """``{prefix}{loss_out}`` (``{prefix}{loss}`` in bits per ``{prefix}{count}``), its perplexity ``{prefix}ppl`` and
    ``{prefix}acc``, the tokens predicted right (``{prefix}ncorrect``): masked LM and generation alike."""
    n = total(prefix + count)
    if n > 0:
        metrics.log_scalar(prefix + loss_out, total(prefix + loss) / n / LN2, n, round=3)
        metrics.log_derived(prefix + "ppl", lambda m: utils.get_perplexity(m[prefix + loss_out].avg))
        metrics.log_scalar(prefix + "acc", 100.0 * total(prefix + "ncorrect") / n, n, round=2)


def _reduce_masked_lm(name, total):
    """``{name}_loss`` (bits per masked token), its perplexity, and ``{name}_acc``: masked tokens predicted right."""
    log_token_metrics(total, f"{name}_", "n", "loss")


def _reduce_mrm(name, total):
    n = total("mrm_n")
    if n > 0:
        metrics.log_scalar("mrm_mse", total("mrm_mse") / n, n, round=4)
        metrics.log_scalar("mrm_ce", total("mrm_ce") / n / LN2, n, round=3)
        metrics.log_scalar("mrm_acc", 100.0 * total("mrm_ncorrect") / n, n, round=2)


def reduce_loss_and_accuracy(prefix, total):
    """``{prefix}_loss`` (bits) and ``{prefix}_acc`` over the ``{prefix}_n`` items that had the objective."""
    n = total(f"{prefix}_n")
    if n > 0:
        metrics.log_scalar(f"{prefix}_loss", total(f"{prefix}_loss") / n / LN2, n, round=3)
        metrics.log_scalar(f"{prefix}_acc", 100.0 * total(f"{prefix}_ncorrect") / n, n, round=2)


def _reduce_generation(name, total):
    """``{name}_loss``: NLL in bits per target token, with its perplexity and token accuracy."""
    log_token_metrics(total, f"{name}_", "ntokens", "nll_loss")


# ---- the objectives --------------------------------------------------------------------------------

OBJECTIVES = {o.name: o for o in (
    Objective("xmlm", UNDERSTANDING, TEXT, _text_blocks, _masked_text, _masked_lm_step, _reduce_masked_lm,
              ("xmlm_loss",)),
    Objective("mmlm", UNDERSTANDING, PAIRS, _pairs("mmlm"), _resampled, _masked_lm_step, _reduce_masked_lm,
              ("mmlm_loss",)),
    Objective("mrm", UNDERSTANDING, PAIRS, _pairs("mrm"), _resampled, _mrm_step, _reduce_mrm, ("mrm_mse", "mrm_ce")),
    Objective("vlm", UNDERSTANDING, PAIRS, _pairs("vlm"), _resampled, _vlm_step, reduce_loss_and_accuracy,
              ("vlm_loss", "vlm_acc")),
    Objective("tlm", UNDERSTANDING, PARALLEL, _translation_pairs, _masked_translations, _masked_lm_step,
              _reduce_masked_lm, ("tlm_loss",)),
    Objective("tcl", UNDERSTANDING, PARALLEL, _translation_views, _sampled_views, _tcl_step, reduce_loss_and_accuracy,
              ("tcl_loss", "tcl_acc"), prepare=_add_tcl_head),
    Objective("ret", UNDERSTANDING, PAIRS, _retrieval_pairs, _resampled, _ret_step,
              lambda name, total: reduce_retrieval("ret_", total), ("ret_vlm_loss", "ret_nce_loss"),
              prepare=add_retrieval_heads),
    Objective("xnli", UNDERSTANDING, PAIRS, _xnli_pairs, _resampled, _xnli_step, reduce_loss_and_accuracy,
              ("xnli_loss", "xnli_acc"), prepare=_add_xnli_head),
    *(Objective(name, UNDERSTANDING, PAIRS, functools.partial(_iglue_examples, name=name), _resampled, _iglue_step,
                reduce_loss_and_accuracy, (f"{name}_loss", f"{name}_acc"),
                prepare=functools.partial(_add_iglue_head, name=name)) for name in IGLUE_JOBS),
    Objective("xdae", GENERATION, TEXT, _text_sentences, _noised_text, generation_step,
              _reduce_generation, ("xdae_loss",)),
    Objective("ic", GENERATION, PAIRS, _captions_to_generate(False), _resampled, generation_step,
              _reduce_generation, ("ic_loss",)),
    Objective("dic", GENERATION, PAIRS, _captions_to_generate(True), _resampled, generation_step,
              _reduce_generation, ("dic_loss",)),
    Objective("ntg", GENERATION, PAIRS, _ntg_items, _resampled, generation_step, _reduce_generation, ("ntg_loss",)),
)}


def of_kind(kind):
    """Names of the objectives that train ``kind``, in registry order."""
    return [name for name, o in OBJECTIVES.items() if o.kind == kind]


def plot_keys():
    return [k for o in OBJECTIVES.values() for k in o.plot_keys]
