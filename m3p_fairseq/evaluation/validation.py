"""The tasks' own metrics inside fairseq's validation: retrieval recall (mR) and BLEU-4.

fairseq-train validates every ``--validate-interval-updates`` (and at ``--save-interval-updates``
saves) by calling the task's ``valid_step`` on every batch of ``--valid-subset`` and
``reduce_metrics`` on the batches' logging outputs, summed across workers. A dev metric here adds
summable counts to those outputs and derives its metric from their sums, as fairseq's translation
task does for ``--eval-bleu``; the metric is then in the validation stats, in the log, in
tensorboard, and usable as ``--best-checkpoint-metric NAME --maximize-best-checkpoint-metric``
(checkpoint_best.pt) and by ``--patience``. tasks/base.py says how a task chooses one.

* ``RetrievalRecall``: mR per language (``mR_{lang}``) and its mean over languages (``mR``), on the
  first ``--valid-retrieval-images`` images of a validation split: its query batches
  (data/retrieval_queries.py) are scored with evaluation/retrieval.py's ``PairScorer`` and ranked with
  its ``i2t_best_ranks`` / ``t2i_ranks``, so the numbers are m3p-retrieval-eval's on the same set.
* ``GenerationBleu``: each batch decoded with fairseq's SequenceGenerator (``task.build_generator``,
  ``--eval-bleu-args`` as fairseq-generate's generation options) and scored with sacrebleu as
  m3p-caption-score does, per target (``bleu_{lang}``, ``bleu_{src}-{tgt}`` for MMT) and their mean
  (``bleu``): the numbers of fairseq-generate + m3p-caption-score on the same set.
"""
import json
from dataclasses import dataclass, field

import numpy as np
from fairseq import metrics
from fairseq.dataclass import FairseqDataclass

from ..data.retrieval_queries import CAPTION_QUERY, IMAGE_QUERY, RetrievalQueryDataset
from ..errors import M3PInputError
from ..utils import split_list
from .caption_metrics import BLEU_STATS, bleu4_from_stats, bleu4_stats, default_tokenize
from .retrieval import RECALL_KS, PairScorer, i2t_best_ranks, retrieval_subset, t2i_ranks

QUERIES = "retrieval_queries"  # the name of the query batches' group in a validation MultitaskDataset
#: the metric families validation reports beside the criterion's (what m3p-plots draws one line per language of)
METRIC_FAMILIES = ("mR", "bleu")


@dataclass
class RetrievalValidConfig(FairseqDataclass):
    valid_retrieval_langs: str = field(default="", metadata={
        "help": "caption languages whose retrieval recall validation reports (mR_LANG, and their mean mR: "
                "--best-checkpoint-metric mR --maximize-best-checkpoint-metric); pre-training: none by default, "
                "m3p_retrieval: its --caption-langs by default"})
    valid_retrieval_images: int = field(default=100, metadata={
        "help": "validation retrieval ranks the first N images of the split (store order) with their captions, as "
                "m3p-retrieval-eval --max-images N does; 0: every image"})


@dataclass
class GenerationValidConfig(FairseqDataclass):
    eval_bleu: bool = field(default=False, metadata={
        "help": "generate the validation set and report BLEU-4 per target (bleu_LANG, bleu_SRC-TGT) and their mean "
                "(bleu: --best-checkpoint-metric bleu --maximize-best-checkpoint-metric), as fairseq-generate "
                "--post-process sentencepiece + m3p-caption-score"})
    eval_bleu_args: str = field(default="{}", metadata={
        "help": 'generation options of validation as JSON, fairseq-generate\'s names, e.g. \'{"beam": 10, '
                '"max_len_b": 60}\' (default: fairseq-generate\'s defaults)'})


def _unwrapped(model):
    """The model itself under fairseq's distributed wrappers (the generator reads its attributes)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def _device(model):
    return next(model.parameters()).device


class RetrievalRecall:
    """Image-text retrieval recall of a task's query sets, per language and averaged."""

    def __init__(self, task, langs):
        if task.cfg.valid_retrieval_images < 0:
            raise M3PInputError(f"--valid-retrieval-images {task.cfg.valid_retrieval_images}: must be >= 0 (0: every "
                                f"image)")
        self.task, self.langs = task, list(langs)
        self.query_sets, self.scorers = {}, {}

    def queries(self, split, base, langs=None):
        """The query set of validation split ``split`` (data read from ``base``): languages ``langs`` (default
        the metric's), the first --valid-retrieval-images images; with --context, MILD's contexts too."""
        cfg = self.task.cfg
        subsets = {lang: retrieval_subset(self.task, lang, base, cfg.valid_retrieval_images,
                                          getattr(cfg, "context", False)) for lang in (langs or self.langs)}
        self.query_sets[split] = RetrievalQueryDataset(split, subsets)
        return self.query_sets[split]

    def begin_validation(self):
        for qs in self.query_sets.values():
            qs.forget_scores()

    def owns(self, sample):
        return QUERIES in sample

    def batch_stats(self, model, sample):
        """R@K hits and query counts per language and direction; zeros for the set's other languages (every
        worker logs the same keys in the same order: fairseq sums them by position)."""
        if QUERIES not in sample:
            return {}
        qs = self.query_sets[sample["retrieval_set"]]
        model = _unwrapped(model)
        queries = sample[QUERIES].cpu().numpy()
        out = {}
        for k, lang in enumerate(qs.langs):
            mine = queries[queries[:, 0] == k]
            for kind, direction in ((IMAGE_QUERY, "i2t"), (CAPTION_QUERY, "t2i")):
                idx = mine[mine[:, 1] == kind, 2]
                ranks = self._ranks(model, qs, k, kind, idx) if len(idx) else np.zeros(0)
                for r in RECALL_KS:
                    out[f"_{lang}_{direction}_r{r}"] = int((ranks < r).sum())
                out[f"_{lang}_{direction}_n"] = len(idx)
        return out

    def _ranks(self, model, qs, k, kind, idx):
        """Ranks of queries ``idx`` of one kind and language: their rows (images) or columns (captions) of the
        language's score matrix, the pairs not yet scored in this validation scored now."""
        subset, matrix = qs.subsets[k], qs.score_matrix(k)
        view = matrix[idx] if kind == IMAGE_QUERY else matrix[:, idx].T  # (queries, candidates)
        q, c = np.nonzero(np.isnan(view))
        if len(q):
            img, cap = (idx[q], c) if kind == IMAGE_QUERY else (c, idx[q])
            key = (qs.name, k)
            if key not in self.scorers:
                self.scorers[key] = PairScorer(subset.captions, subset.images, self.task.source_dictionary.pad(),
                                               subset.contexts)
            matrix[img, cap] = self.scorers[key](model, img, cap, device=_device(model))
        if kind == IMAGE_QUERY:
            return i2t_best_ranks(matrix[idx], subset.caption_image, idx)
        return t2i_ranks(matrix[:, idx], subset.caption_image[idx])

    def reduce(self, total):
        # derived metrics are registered by the first batch that has them and computed at the end, from every
        # batch's sums: each looks the languages up in the summed meters then
        langs = list(dict.fromkeys(l for qs in self.query_sets.values() for l in qs.langs))
        seen = False
        for lang in langs:
            for direction in ("i2t", "t2i"):
                if total(f"_{lang}_{direction}_n") > 0:
                    for key in [f"_r{r}" for r in RECALL_KS] + ["_n"]:
                        metrics.log_scalar_sum(f"_{lang}_{direction}{key}", total(f"_{lang}_{direction}{key}"))
                    metrics.log_derived(f"mR_{lang}", lambda m, lang=lang: _mean_recall(m, lang))
                    seen = True
        if seen:
            metrics.log_derived("mR", lambda m: _mean(_mean_recall(m, lang) for lang in langs))


def _mean_recall(meters, lang):
    """mR of one language from the summed hits (the mean of R@1/5/10 both ways, percent); None before both
    directions are in."""
    keys = [(f"_{lang}_{d}_r{r}", f"_{lang}_{d}_n") for d in ("i2t", "t2i") for r in RECALL_KS]
    if not all(n in meters and meters[n].sum > 0 for _, n in keys):
        return None
    return round(float(np.mean([100.0 * meters[hits].sum / meters[n].sum for hits, n in keys])), 2)


def _mean(values):
    """The mean of the values that are there (the metric of several languages or targets), rounded."""
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 2) if values else None


def generated_texts(task, generator, model, sample):
    """(hypotheses, references, hypothesis token ids) of a batch: the strings fairseq-generate --post-process
    sentencepiece prints as its D- and T- lines (what m3p-caption-score scores), and the ids they come from."""
    from fairseq import utils
    from fairseq_cli.generate import get_symbols_to_strip_from_output

    d, strip = task.target_dictionary, get_symbols_to_strip_from_output(generator)
    out = task.inference_step(generator, [model], sample)
    tokens = [out[i][0]["tokens"].int().cpu() for i in range(len(out))]
    hyps = [d.string(t, "sentencepiece", extra_symbols_to_ignore=strip) for t in tokens]
    refs = [d.string(utils.strip_pad(t, d.pad()).int().cpu(), "sentencepiece", escape_unk=True,
                     extra_symbols_to_ignore=strip) for t in sample["target"]]
    return hyps, refs, tokens


class GenerationBleu:
    """BLEU-4 of the generated validation set, per target (source and target language) and averaged."""

    def __init__(self, task, generation_args):
        from fairseq.dataclass.configs import GenerationConfig

        try:
            self.gen_cfg = GenerationConfig(**json.loads(generation_args))
        except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError; an unknown option a TypeError
            raise M3PInputError(f"--eval-bleu-args {generation_args!r}: {e}")
        self.task, self.generator, self.model = task, None, None
        self._targets = None

    def begin_validation(self):
        self._targets = None  # read again from the datasets loaded by then, once per validation

    def owns(self, sample):
        return False

    def targets(self):
        """(source, target) language-id pairs of the loaded validation sets, sorted: the same on every worker."""
        if self._targets is None:
            pairs = set()
            for split, ds in self.task.datasets.items():
                if split != "train" and hasattr(ds, "tgt_langs"):
                    pairs.update(zip(ds.src_langs.tolist(), ds.tgt_langs.tolist()))
            self._targets = sorted(pairs)
        return self._targets

    def name(self, src, tgt):
        s, t = self.task.lang_name(src), self.task.lang_name(tgt)
        return t if s == t else f"{s}-{t}"

    def batch_stats(self, model, sample):
        model = _unwrapped(model)
        if self.model is not model:
            self.generator, self.model = self.task.build_generator([model], self.gen_cfg), model
        hyps, refs, _ = generated_texts(self.task, self.generator, model, sample)
        net = sample["net_input"]
        pairs = list(zip(net["src_lang"].tolist(), net["tgt_lang"].tolist()))
        out = {}
        for src, tgt in self.targets():
            mine = [i for i, p in enumerate(pairs) if p == (src, tgt)]
            stats = bleu4_stats([hyps[i] for i in mine], [[refs[i] for i in mine]],
                                default_tokenize(self.task.lang_name(tgt))) if mine else [0] * BLEU_STATS
            name = self.name(src, tgt)
            out.update({f"_bleu_{name}_{j}": v for j, v in enumerate(stats)})
        return out

    def reduce(self, total):
        targets = [(self.name(src, tgt), default_tokenize(self.task.lang_name(tgt))) for src, tgt in self.targets()]
        seen = False
        for name, tokenize in targets:
            if total(f"_bleu_{name}_1") == 0:  # no reference of this target: not in these batches
                continue
            for j in range(BLEU_STATS):
                metrics.log_scalar_sum(f"_bleu_{name}_{j}", total(f"_bleu_{name}_{j}"))
            metrics.log_derived(f"bleu_{name}", lambda m, n=name, t=tokenize: _bleu(m, n, t))
            seen = True
        if seen:
            metrics.log_derived("bleu", lambda m: _mean(_bleu(m, n, t) for n, t in targets))


def _bleu(meters, name, tokenize):
    """BLEU-4 of one target from its summed statistics, rounded as m3p-caption-score; None when absent."""
    if f"_bleu_{name}_1" not in meters:
        return None
    return round(bleu4_from_stats([meters[f"_bleu_{name}_{j}"].sum for j in range(BLEU_STATS)], tokenize), 2)


def retrieval_langs(cfg, default=""):
    """--valid-retrieval-langs, else ``default`` (a comma-separated list)."""
    return split_list(cfg.valid_retrieval_langs) or split_list(default)
