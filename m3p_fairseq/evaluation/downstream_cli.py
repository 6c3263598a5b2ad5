"""m3p-downstream-eval: evaluate pre-trained or fine-tuned M3P checkpoints per language, one process
for all languages, and merge the numbers into the results JSON.

    m3p-downstream-eval retrieval DATA --path ckpt.pt --langs en,de,fr --results R --key retrieval.zero_shot
    m3p-downstream-eval retrieval DATA --path ckpt.pt --langs en --two-stage --top-k 10 --key retrieval.two_stage
    m3p-downstream-eval retrieval DATA/mild_corpus --path ckpt.pt --langs en,de --context --key retrieval.mild.with_context
    m3p-downstream-eval xnli DATA --path ckpt.pt --results R --key xnli
    m3p-downstream-eval generate DATA --path ckpt.pt --targets en-de,de-en --beam 10 --results R --key mmt

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

import numpy as np
import torch

from ..checkpoints import GENERATION, UNDERSTANDING, load_model_of_kind
from ..errors import M3PInputError
from .results import update_results

KIND_OF_COMMAND = {"retrieval": UNDERSTANDING, "xnli": UNDERSTANDING, "generate": GENERATION}
DEFAULT_KEY = {"retrieval": "retrieval.finetuned", "xnli": "xnli", "generate": "generation"}


def bar(what):
    """A tqdm progress bar over an iterable, on stderr (fairseq's own output stays on stdout)."""
    from tqdm import tqdm

    return lambda items: tqdm(items, desc=what, file=sys.stderr, mininterval=2, leave=False, disable=None)


def retrieval(a, model, task, device):
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
            files = [np.load(f) for f in a.merge]
            parts = [(z[f"{lang}_ids"], z[f"{lang}_scores"]) for z in files]
            if a.two_stage:
                matrix = merge_two_stage(files[0][f"{lang}_dual"], files[0][f"{lang}_pairs"], parts)
                n_pairs = len(files[0][f"{lang}_pairs"])
            else:
                matrix, seen = merge_shards(parts, n_img, n_cap)
                if not seen.all():
                    raise M3PInputError(f"shards {' '.join(a.merge)} miss {int((~seen).sum())} pairs of {lang}")
                n_pairs = n_img * n_cap
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
        try:
            save_shard_scores(a.scores_out, shard_out)
        except ValueError as e:
            raise M3PInputError(str(e))
        print(a.scores_out)
        return None
    return metrics


# ---- XNLI -------------------------------------------------------------------------------------------

@torch.no_grad()
def xnli(a, model, task, device):
    from ..tasks.xnli import XNLI_HEAD

    if XNLI_HEAD not in model.classification_heads:
        raise M3PInputError(f"{a.path}: no {XNLI_HEAD} head; fine-tune it with --task m3p_xnli")
    model.eval()
    metrics = {}
    for lang in a.langs or task.eval_langs():
        split = f"{a.split}.{lang}"
        task.load_dataset(split)
        itr = task.get_batch_iterator(task.dataset(split), max_sentences=a.batch_size, seed=1).next_epoch_itr(shuffle=False)
        correct = total = 0
        for sample in bar(f"xnli {lang}")(itr):
            net_input = {k: v.to(device) for k, v in sample["net_input"].items()}
            logits = model(**net_input, classification_head_name=XNLI_HEAD)["classification"]
            correct += int((logits.argmax(-1).cpu() == sample["target"].view(-1)).sum())
            total += sample["target"].numel()
        metrics[lang] = {"acc": round(100.0 * correct / total, 2), "n": total}
        print(f"{lang}: accuracy {metrics[lang]['acc']:.1f} ({total} pairs)", flush=True)
    return metrics


# ---- generation (captioning, MMT, NTG) ---------------------------------------------------------------

def generation_dataset(task, split, target):
    """The test set of one target: a caption language, an MMT direction or an NTG language."""
    name = f"{split}.{target}"
    task.load_dataset(name)
    return task.dataset(name), target.split("-")[-1]


@torch.no_grad()
def generate(a, model, task, device):
    from fairseq import utils
    from fairseq.dataclass.configs import GenerationConfig

    from .caption_metrics import caption_scores
    from .validation import generated_texts

    model.eval()
    cfg = GenerationConfig(beam=a.beam, max_len_a=0, max_len_b=a.max_len_b, lenpen=a.lenpen)
    generator = task.build_generator([model], cfg)
    metrics = {}
    for target in a.targets:
        dataset, out_lang = generation_dataset(task, a.split, target)
        itr = task.get_batch_iterator(dataset, max_sentences=a.batch_size, seed=1).next_epoch_itr(shuffle=False)
        hyps, refs = {}, {}
        for sample in bar(f"generate {target}")(itr):
            sample = utils.move_to_cuda(sample) if device == "cuda" else sample
            batch_hyps, batch_refs = generated_texts(task, generator, model, sample)
            for i, sid in enumerate(sample["id"].tolist()):
                hyps[sid], refs[sid] = batch_hyps[i], batch_refs[i]
        order = sorted(hyps)
        scores = caption_scores([hyps[i] for i in order], [[refs[i] for i in order]], lang=out_lang)
        metrics[target] = scores
        if a.hyps_dir:
            os.makedirs(a.hyps_dir, exist_ok=True)
            with open(os.path.join(a.hyps_dir, f"{a.split}.{target}.hyp"), "w", encoding="utf-8") as f:
                f.writelines(hyps[i] + "\n" for i in order)
        print(f"{target}: BLEU-4 {scores['bleu4']:.1f}  CIDEr {scores['cider']:.1f}  ({len(order)} items)  "
              f"e.g. {hyps[order[0]]!r} for {refs[order[0]]!r}", flush=True)
    return metrics


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(name, help):
        s = sub.add_parser(name, help=help, description=help)
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
    device = "cuda" if torch.cuda.is_available() and not a.cpu else "cpu"
    kind = KIND_OF_COMMAND[a.command]
    model, task = load_model_of_kind(a.path, a.data, kind, f"'{a.command}'")
    model.to(device)
    metrics = {"retrieval": retrieval, "xnli": xnli, "generate": generate}[a.command](a, model, task, device)
    if metrics is None or not a.results:
        return
    key = a.key or DEFAULT_KEY[a.command]
    save_metrics(a.results, key, metrics)
    print(f"{key} -> {a.results}", file=sys.stderr)


def save_metrics(path, key, metrics):
    """Merge ``{lang: metrics}`` under ``key``. Each language's chance level (``chance_mR``) stays beside its
    own numbers; the section gets a chance line (``chance_mR`` next to ``key``) only when every language shares it."""
    update_results(path, key, metrics)
    chances = {m["chance_mR"] for m in metrics.values() if isinstance(m, dict) and "chance_mR" in m}
    if len(chances) == 1 and "." in key:
        update_results(path, key.rsplit(".", 1)[0] + ".chance_mR", chances.pop())


def retrieval_main(argv=None):
    """m3p-retrieval-eval: ``m3p-downstream-eval retrieval`` storing under retrieval.zero_shot unless --key says."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--key" not in argv and not any(x.startswith("--key=") for x in argv):
        argv += ["--key", "retrieval.zero_shot"]
    main(["retrieval"] + argv)


if __name__ == "__main__":
    main()
