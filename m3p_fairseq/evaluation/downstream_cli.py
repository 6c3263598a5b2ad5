"""m3p-downstream-eval: evaluate pre-trained or fine-tuned M3P checkpoints per language, one process
for all languages, and merge the numbers into the results JSON.

    m3p-downstream-eval retrieval DATA --path ckpt.pt --langs en,de,fr --results R --key retrieval.zero_shot
    m3p-downstream-eval retrieval DATA --path ckpt.pt --langs en --two-stage --top-k 10 --key retrieval.two_stage
    m3p-downstream-eval retrieval DATA/mild_corpus --path ckpt.pt --langs en,de --context --key retrieval.mild.with_context
    m3p-downstream-eval xnli DATA --path ckpt.pt --results R --key xnli
    m3p-downstream-eval generate DATA --path ckpt.pt --targets en-de,de-en --beam 10 --results R --key mmt
    m3p-downstream-eval iglue xvnli DATA --path ckpt.pt --langs en,ar,es,fr,ru --results R   # evaluation/iglue.py

``m3p-retrieval-eval DATA ...`` is ``m3p-downstream-eval retrieval DATA ...`` with the key
``retrieval.zero_shot`` by default. Retrieval scores every (image, caption) pair with the VLM head
(zero-shot: the pre-trained model as it is; fine-tuned: after m3p_retrieval), prints R@1/5/10 both
ways and mR per language with its chance level, and can be sharded over machines
(``--num-shards N --shard-id K --scores-out F``) and merged exactly (``--merge F1 F2 ...``).

The tasks themselves run under the stock commands (``fairseq-validate --valid-subset test.de``,
``fairseq-generate --gen-subset test.en-de``); this only saves a process start per language and
writes the results JSON. Retrieval scoring is ``evaluation/retrieval.py``'s and, with
``--two-stage``, ``evaluation/two_stage.py``'s; BLEU-4 and CIDEr are ``caption_metrics``'
(sacrebleu, pycocoevalcap).
"""
import argparse
import logging
import os
import sys
import time

import torch

from ..checkpoints import GENERATION, UNDERSTANDING, load_model_of_kind
from ..errors import M3PInputError, command, require_file
from ..outputs import Staging, check_writable
from .results import check_results_file, load_results, set_result, write_results
from .retrieval import load_shard_scores

KIND_OF_COMMAND = {"retrieval": UNDERSTANDING, "xnli": UNDERSTANDING, "generate": GENERATION, "iglue": UNDERSTANDING}
DEFAULT_KEY = {"retrieval": "retrieval.finetuned", "xnli": "xnli", "generate": "generation"}


def bar(what):
    """A tqdm progress bar over an iterable, on stderr (fairseq's own output stays on stdout)."""
    from tqdm import tqdm

    return lambda items: tqdm(items, desc=what, file=sys.stderr, mininterval=2, leave=False, disable=None)


def retrieval(a, model, task, device, staging):
    """Recall per language: every pair scored by the cross-encoder (zero-shot or fine-tuned), or two-stage;
    sharded over machines and merged exactly. Returns {lang: metrics, with the language's chance_mR}."""
    from ..models.dual_encoder import has_dual_heads
    from .retrieval import (chance_recall, merge_shards, recall_at_k, recall_line, retrieval_subset, save_shard_scores,
                            score_pairs)
    from .two_stage import merge_two_stage, two_stage_scores

    if a.two_stage and not has_dual_heads(model):
        raise M3PInputError(f"{a.path}: no dual-encoder heads; fine-tune it with --task m3p_retrieval (--dual-dim > 0) "
                            f"for two-stage retrieval")
    pad, bos = task.source_dictionary.pad(), task.source_dictionary.bos()
    metrics, shard_out = {}, {}
    for lang in a.langs:
        captions, caption_image, images, contexts = retrieval_subset(task, lang, a.split, a.max_images, a.context)
        n_img, n_cap = len(images), len(captions)
        started = time.time()
        if a.merge:
            files = [load_shard_scores(f, lang, a.two_stage) for f in a.merge]
            parts = [(z[f"{lang}_ids"], z[f"{lang}_scores"]) for z in files]
            try:
                if a.two_stage:
                    matrix = merge_two_stage(files[0][f"{lang}_dual"], files[0][f"{lang}_pairs"], parts)
                    n_pairs = len(files[0][f"{lang}_pairs"])
                else:
                    matrix, seen = merge_shards(parts, n_img, n_cap)
                    if not seen.all():
                        raise M3PInputError(f"shards {' '.join(a.merge)} miss {int((~seen).sum())} pairs of {lang}")
                    n_pairs = n_img * n_cap
            except M3PInputError:
                raise
            except (ValueError, IndexError) as e:
                raise M3PInputError(f"shards {' '.join(a.merge)}, {lang}: {e}")
        elif a.two_stage:
            dual, pairs, (ids, scores) = two_stage_scores(model, captions, images, pad, bos, a.top_k, a.batch_size,
                                                          a.num_shards, a.shard_id, device,
                                                          progress=bar(f"re-rank {lang}"))
            n_pairs = len(pairs)
            if a.num_shards > 1:
                shard_out.update({f"{lang}_ids": ids, f"{lang}_scores": scores, f"{lang}_dual": dual,
                                  f"{lang}_pairs": pairs})
                continue
            matrix = merge_two_stage(dual, pairs, [(ids, scores)])
        else:
            ids, scores = score_pairs(model, captions, images, pad, a.batch_size, a.num_shards, a.shard_id,
                                      device=device, contexts=contexts, progress=bar(f"score {lang}"))
            if a.num_shards > 1:
                shard_out.update({f"{lang}_ids": ids, f"{lang}_scores": scores})
                continue
            matrix, _ = merge_shards([(ids, scores)], n_img, n_cap)
            n_pairs = n_img * n_cap
        m = recall_at_k(matrix, caption_image)
        m.update(num_images=n_img, num_captions=n_cap, pairs=int(n_pairs), full_pairs=n_img * n_cap,
                 seconds=round(time.time() - started, 2))
        if a.two_stage and a.compare_full:
            ids, scores = score_pairs(model, captions, images, pad, a.batch_size, device=device,
                                      progress=bar(f"score {lang} (full)"))
            full, _ = merge_shards([(ids, scores)], n_img, n_cap)
            m["full_mR"] = recall_at_k(full, caption_image)["mR"]
        if a.two_stage and not a.merge:
            m["dual_mR"] = recall_at_k(dual, caption_image)["mR"]
        m["chance_mR"] = chance_recall(caption_image, n_img)["mR"]
        metrics[lang] = m
        extra = f"  {n_pairs} of {n_img * n_cap} pairs cross-encoded" if a.two_stage else ""
        extra += "".join(f"  {k} {m[k]:.1f}" for k in ("dual_mR", "full_mR") if k in m)
        print(recall_line(lang, m, m["chance_mR"], extra), flush=True)
    if shard_out:
        save_shard_scores(staging.file(a.scores_out), shard_out)
        print(a.scores_out)
        return None
    return metrics


# ---- XNLI -------------------------------------------------------------------------------------------

@torch.no_grad()
def xnli(a, model, task, device, staging):
    """Accuracy per language of a model with an XNLI head, trained by the m3p_xnli task or with the ``xnli``
    objective among others (multitask_multimodal): the pairs are read the same way for both."""
    from ..data.xnli_dataset import XNLI_HEAD, xnli_dataset
    from ..objectives import xnli_logits

    if XNLI_HEAD not in model.classification_heads:
        raise M3PInputError(f"{a.path}: no {XNLI_HEAD} head; fine-tune it with --task m3p_xnli (or the xnli objective)")
    model.eval()
    metrics = {}
    for lang in a.langs or task.folder_langs("", "xnli", "XNLI data"):
        dataset = xnli_dataset(task, a.split, [lang], seed=1)
        itr = task.get_batch_iterator(dataset, max_sentences=a.batch_size, seed=1).next_epoch_itr(shuffle=False)
        correct = total = 0
        for sample in bar(f"xnli {lang}")(itr):
            net_input = {k: v.to(device) for k, v in sample["net_input"].items()}
            logits = xnli_logits(model, net_input)
            correct += int((logits.argmax(-1).cpu() == sample["target"].view(-1)).sum())
            total += sample["target"].numel()
        metrics[lang] = {"acc": round(100.0 * correct / total, 2), "n": total}
        print(f"{lang}: accuracy {metrics[lang]['acc']:.1f} ({total} pairs)", flush=True)
    return metrics


# ---- IGLUE ------------------------------------------------------------------------------------------

def iglue(a, model, task, device, staging):
    """Accuracy (XVNLI, xGQA, MaRVL) or R@1 both ways (xFlickr&CO, WIT) per language, with the task's levels."""
    from .iglue import evaluate, fine_tuned_for, langs_with, line

    task = fine_tuned_for(a.job, task, a.path)
    langs = a.langs or langs_with(a.job, task, a.split)
    metrics = evaluate(a.job, model, task, langs, a.split, a.batch_size, device, progress=bar)
    for lang in langs:
        print(line(a.job, lang, metrics[lang]), flush=True)
    return metrics


# ---- generation (captioning, MMT, NTG) ---------------------------------------------------------------

def generation_dataset(task, split, target):
    """The test set of one target: a caption language, an MMT direction or an NTG language (also of a model
    fine-tuned with the ``ntg`` objective among others, whose checkpoint names the multitask task)."""
    from ..data.ntg_dataset import ntg_dataset

    if "ntg" in getattr(task, "objectives", ()):
        return ntg_dataset(task, split, [target]), target
    name = f"{split}.{target}"
    task.load_dataset(name)
    return task.dataset(name), target.split("-")[-1]


@torch.no_grad()
def generate(a, model, task, device, staging):
    from fairseq import utils
    from fairseq.dataclass.configs import GenerationConfig

    from .caption_metrics import caption_scores
    from .validation import generated_texts

    model.eval()
    cfg = GenerationConfig(beam=a.beam, max_len_a=0, max_len_b=a.max_len_b, lenpen=a.lenpen)
    generator = task.build_generator([model], cfg)
    lid = language_identifier(task.data_path(), task.target_dictionary)
    metrics = {}
    for target in a.targets:
        dataset, out_lang = generation_dataset(task, a.split, target)
        itr = task.get_batch_iterator(dataset, max_sentences=a.batch_size, seed=1).next_epoch_itr(shuffle=False)
        hyps, refs, hyp_ids = {}, {}, {}
        for sample in bar(f"generate {target}")(itr):
            sample = utils.move_to_cuda(sample) if device == "cuda" else sample
            batch_hyps, batch_refs, batch_ids = generated_texts(task, generator, model, sample)
            for i, sid in enumerate(sample["id"].tolist()):
                hyps[sid], refs[sid], hyp_ids[sid] = batch_hyps[i], batch_refs[i], batch_ids[i]
        order = sorted(hyps)
        scores = caption_scores([hyps[i] for i in order], [[refs[i] for i in order]], lang=out_lang)
        if lid is not None and out_lang in lid.langs:
            scores["right_language"] = lid.share([hyp_ids[i] for i in order], out_lang)
        metrics[target] = scores
        if a.hyps_dir:
            with open(staging.file(os.path.join(a.hyps_dir, f"{a.split}.{target}.hyp")), "w", encoding="utf-8") as f:
                f.writelines(hyps[i] + "\n" for i in order)
        in_lang = f"  in {out_lang} {scores['right_language']:.0f}%" if "right_language" in scores else ""
        print(f"{target}: BLEU-4 {scores['bleu4']:.1f}  CIDEr {scores['cider']:.1f}{in_lang}  ({len(order)} items)  "
              f"e.g. {hyps[order[0]]!r} for {refs[order[0]]!r}", flush=True)
    return metrics


def language_identifier(data_dir, dictionary):
    """The identifier of the output language (evaluation/language_id.py), learned from DATA/text; None (and
    said) when the data folder has no text corpus to learn it from."""
    from .language_id import LanguageIdentifier

    if not os.path.isdir(os.path.join(data_dir, "text")):
        print(f"{data_dir}/text: no text corpus; the share of outputs in the requested language "
              f"(right_language) is not measured", file=sys.stderr)
        return None
    return LanguageIdentifier.from_data(data_dir, dictionary)


@command("m3p-downstream-eval")
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(name, help, *first):
        s = sub.add_parser(name, help=help, description=help)
        for positional, kwargs in first:
            s.add_argument(positional, **kwargs)
        s.add_argument("data")
        s.add_argument("--path", required=True, help="checkpoint to evaluate")
        s.add_argument("--split", default="test")
        s.add_argument("--batch-size", type=int, default=256)
        s.add_argument("--results", help="results JSON to update")
        s.add_argument("--key", help="dotted key under which to store the metrics (default: the command's)")
        s.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is there")
        return s

    s = common("retrieval", "cross-encoder retrieval recall per language (full matrix or two-stage)")
    s.add_argument("--langs", default="en")
    s.add_argument("--max-images", type=int, default=None, help="evaluate on the first N images only")
    s.add_argument("--context", action="store_true", help="MILD: feed each image's context with it")
    s.add_argument("--two-stage", action="store_true", help="dual-encoder shortlist, cross-encoder re-ranking")
    s.add_argument("--top-k", type=int, default=10, help="two-stage: candidates kept per image and per caption")
    s.add_argument("--compare-full", action="store_true", help="two-stage: also score the full matrix (full_mR)")
    s.add_argument("--num-shards", type=int, default=1)
    s.add_argument("--shard-id", type=int, default=0)
    s.add_argument("--scores-out", help="with sharding: save this shard's pair scores (.npz)")
    s.add_argument("--merge", nargs="+", help="shard files to merge instead of scoring")
    s = common("xnli", "XNLI accuracy per language")
    s.add_argument("--langs", default="", help="default: every language under DATA/xnli")
    from .iglue import JOBS

    s = common("iglue", "IGLUE: accuracy (xvnli, xgqa, marvl) or R@1 both ways (xflickrco, wit) per language, "
                        "IGLUE's average over the non-English languages, the chance / majority level",
               ("job", {"choices": JOBS}))
    s.add_argument("--langs", default="", help="default: every language that has the split")
    s = common("generate", "beam search + BLEU-4 / CIDEr per caption language, MMT direction or NTG language")
    s.add_argument("--targets", required=True, help="comma-separated: languages (captioning, NTG) or directions (MMT)")
    s.add_argument("--beam", type=int, default=10, help="beam size (paper: 10)")
    s.add_argument("--max-len-b", type=int, default=60, help="longest output in tokens")
    s.add_argument("--lenpen", type=float, default=1.0)
    s.add_argument("--hyps-dir", help="write the generated texts here, one file per target")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)  # fairseq and h5py log at INFO/DEBUG on import
    for name in ("langs", "targets"):
        if hasattr(a, name):
            setattr(a, name, [x for x in getattr(a, name).split(",") if x])
    check_up_front(a, p)
    device = "cuda" if torch.cuda.is_available() and not a.cpu else "cpu"
    kind = KIND_OF_COMMAND[a.command]
    model, task = load_model_of_kind(a.path, a.data, kind, f"'{a.command}'")
    model.to(device)
    key = results_key(a)
    with Staging() as out:  # scores, hypotheses and results: all written at the end, or none
        metrics = {"retrieval": retrieval, "xnli": xnli, "generate": generate, "iglue": iglue}[a.command](
            a, model, task, device, out)
        if metrics is None or not a.results:
            return
        if a.command == "iglue":
            from .iglue import save as save_iglue

            save_iglue(a.results, key, metrics, out)
        else:
            save_metrics(a.results, key, metrics, out)
    print(f"{key} -> {a.results}", file=sys.stderr)


def results_key(a):
    """Where the command's numbers go in --results: --key, else the command's own place."""
    if a.key:
        return a.key
    if a.command == "iglue":
        return f"iglue_translate_test.{a.job}" if a.split == "test_mt" else f"iglue.{a.job}"
    return DEFAULT_KEY[a.command]


def check_up_front(a, parser):
    """Before any model is loaded: the outputs can be written and the flags that shape them agree, so that
    no evaluation runs to lose its numbers at the end."""
    check_results_file(a.results, results_key(a))
    check_writable(getattr(a, "scores_out", None))
    check_writable(getattr(a, "hyps_dir", None), folder=True)
    if hasattr(a, "num_shards"):
        if not 0 <= a.shard_id < a.num_shards:
            parser.error(f"--shard-id {a.shard_id} --num-shards {a.num_shards}: expected 0 <= shard id < shards")
        if a.num_shards > 1 and not a.scores_out and not a.merge:
            parser.error("--num-shards > 1 needs --scores-out (the shard's scores, merged later with --merge)")
    for path in getattr(a, "merge", None) or ():
        require_file(path, "scores file (--merge)")
        for lang in a.langs:
            load_shard_scores(path, lang, a.two_stage)


def save_metrics(path, key, metrics, staging=None):
    """Merge ``{lang: metrics}`` under ``key``. Each language's chance level (``chance_mR``) stays beside its
    own numbers; the section gets a chance line (``chance_mR`` next to ``key``) only when every language shares it.
    ``staging``: an outputs.Staging the file joins (default: written at once)."""
    doc = set_result(path, load_results(path), key, metrics)
    chances = {m["chance_mR"] for m in metrics.values() if isinstance(m, dict) and "chance_mR" in m}
    if len(chances) == 1 and "." in key:
        set_result(path, doc, key.rsplit(".", 1)[0] + ".chance_mR", chances.pop())
    write_results(path, doc, staging)


@command("m3p-retrieval-eval")
def retrieval_main(argv=None):
    """m3p-retrieval-eval: ``m3p-downstream-eval retrieval`` storing under retrieval.zero_shot unless --key says."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--key" not in argv and not any(x.startswith("--key=") for x in argv):
        argv += ["--key", "retrieval.zero_shot"]
    main.__wrapped__(["retrieval"] + argv)


if __name__ == "__main__":
    main()
