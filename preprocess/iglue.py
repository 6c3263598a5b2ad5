"""m3p-import-iglue: IGLUE's annotation files, as e-bug/iglue distributes them, into a task's DATA folder.

    m3p-import-iglue TASK FILE [FILE ...] --lang L --split S --out DATA --spm SPM --dict DICT \\
        [--regions MANIFEST] [--answers trainval_ans2label.json] [--max-tokens N]

One call imports one split of one language (several files are read as one split). TASK and the
files it reads (every shape is checked; few-shot ``train_{shots}`` files and the machine-translated
``*_gmt`` test sets have the shapes of the task's other files):

| TASK | files | text | image(s) | target |
|---|---|---|---|---|
| xvnli | SNLI-VE / XVNLI ``.jsonl`` (``train.jsonl.zip`` too) | ``sentence2`` | ``Flikr30kID`` (spelled so) | ``gold_label``: contradiction=0, neutral=1, entailment=2; ``-`` (no consensus) skipped and counted |
| xgqa | GQA / xGQA question dict ``.json`` (qid -> ``question``, ``imageId``, ``answer``) or LXMERT-style list ``.json`` (``sent``, ``img_id``, soft ``label`` {answer: score}, ``question_id``) | question | GQA image id | answer scores over ``--answers`` (``trainval_ans2label.json``, or its ``.pkl`` read without running code); questions with no answer in it are dropped and counted |
| marvl | NLVR2 ``.jsonl`` (``identifier`` -> its ``-img0`` / ``-img1`` images, ``sentence``, ``label`` "True"/"False") or MaRVL ``.jsonl`` (``left_img``, ``right_img``, ``caption``, ``label`` bool) | statement | left, right | false=0, true=1 |
| xflickrco | Flickr30K / xFlickr&CO ``.jsonl`` (``sentences``, ``img_path``, ``id``) | each sentence | ``img_path`` | (retrieval) |
| wit | WIT ``.jsonl`` (``caption_reference_description``, ``wit_ix``) | caption | ``wit_ix`` | (retrieval) |

What it writes (tasks/iglue.py reads it; the retrieval tasks read the captions layout):

    DATA/dict.txt, DATA/sentencepiece.bpe.model        copied from --dict / --spm (must match if present)
    DATA/{task}/{lang}/{split}.{bin,idx,jsonl}        xvnli, xgqa, marvl: texts + side file (image ids, target)
    DATA/xgqa/answers.txt                             the answer vocabulary, in label order
    DATA/captions/{lang}/{split}.{bin,idx,ids}        xflickrco, wit: one caption a line, its image id beside
    DATA/regions/{split}.{lang}.json (.index)         a manifest over --regions' shards (retrieval: regions/{split}.json,
                                                      which every language of the split shares)

Image ids are reconciled with the region store (--regions, or the store DATA has for the split): an
annotation's reference is found as it is, else by its file stem (``1007129816.jpg`` <-> ``1007129816``,
``39-Panci/39-n-5.jpg`` <-> ``39-n-5``), and a COCO file name by its number
(``COCO_val2014_000000391895.jpg`` <-> ``391895``); the side file holds the store's id. The first
reference without features stops the import in one line naming the file, the line and the id.
Texts longer than --max-tokens pieces (IGLUE's max_seq_length, ``<s>`` and ``</s>`` included: 80, xGQA
40) are cut, as volta cuts them, and counted. Nothing is written unless the whole split reads.
"""
import argparse
import collections
import json
import os
import pickle
import re
import sys

from m3p_fairseq.data.iglue_dataset import ANSWERS_FILE, MARVL, XGQA, XVNLI, side_record
from m3p_fairseq.data.region_store import RegionStore, manifest_shards, merge_manifests, read_manifest
from m3p_fairseq.errors import command
from m3p_fairseq.outputs import Staging, check_writable
from preprocess.binarize import binarize
from preprocess.datasets import DatasetError, _clean, _open, install_vocabulary

NAME = re.compile(r"^[A-Za-z0-9_]+$")  # a split or language name: no dots (test.de names a language)


class Example(collections.namedtuple("Example", "where id text images target")):
    """One annotation: ``where`` names its file and line; ``images`` are the annotation's references;
    ``target`` is a class index, a {answer: score} dict (xGQA) or None (retrieval)."""


def _records(path):
    """(where, record) of a JSON-lines file, each line an object."""
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}: line {n}"
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise DatasetError(f"{where}: not JSON ({e.msg})")
            if not isinstance(rec, dict):
                raise DatasetError(f"{where}: expected a JSON object, found {type(rec).__name__}")
            yield where, rec


def _document(path):
    with _open(path) as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise DatasetError(f"{path}: not JSON ({e})")


def _need(rec, where, *keys):
    missing = [k for k in keys if k not in rec]
    if missing:
        raise DatasetError(f"{where}: no {', '.join(repr(k) for k in missing)} (found {', '.join(sorted(rec)) or 'nothing'})")


def _bool(value, where):
    """NLVR2's "True"/"False", MaRVL's true/false."""
    if isinstance(value, bool):
        return value
    if value in ("True", "False", "true", "false"):
        return value.lower() == "true"
    raise DatasetError(f"{where}: label {value!r} is neither true nor false")


# ---- readers: one per task, yielding Examples ---------------------------------------------------------

def xvnli_examples(path, stats, **unused):
    labels = XVNLI.classes
    for where, rec in _records(path):
        _need(rec, where, "gold_label", "sentence2", "Flikr30kID")
        if rec["gold_label"] == "-":  # SNLI's pairs without a majority label: nothing to learn or score
            stats["skipped: gold_label '-'"] += 1
            continue
        if rec["gold_label"] not in labels:
            raise DatasetError(f"{where}: gold_label {rec['gold_label']!r} is not one of {', '.join(labels)}")
        yield Example(where, rec.get("pairID", where), rec["sentence2"], [str(rec["Flikr30kID"])],
                      labels.index(rec["gold_label"]))


def gqa_examples(path, stats, answers=None, **unused):
    """A GQA question dict (xGQA's files) or an LXMERT-style list (IGLUE's GQA training files)."""
    doc = _document(path)
    if isinstance(doc, dict):
        for qid, q in doc.items():
            where = f"{path}: question {qid}"
            if not isinstance(q, dict):
                raise DatasetError(f"{where}: expected an object with question, imageId, answer")
            _need(q, where, "question", "imageId", "answer")
            yield from _answered(where, qid, q["question"], q["imageId"], {q["answer"]: 1.0}, answers, stats)
    elif isinstance(doc, list):
        for k, item in enumerate(doc):
            where = f"{path}: item {k}"
            if not isinstance(item, dict):
                raise DatasetError(f"{where}: expected an object with sent, img_id, label, question_id")
            _need(item, where, "sent", "img_id", "label", "question_id")
            if not isinstance(item["label"], dict):
                raise DatasetError(f"{where} (question {item['question_id']}): label must map answers to scores")
            yield from _answered(f"{where} (question {item['question_id']})", item["question_id"], item["sent"],
                                 item["img_id"], item["label"], answers, stats)
    else:
        raise DatasetError(f"{path}: expected a GQA question dict or an LXMERT-style list of questions")


def _answered(where, qid, question, image, label, answers, stats):
    """The question with its answer scores over the vocabulary; none in it: dropped and counted."""
    scores = {}
    for answer, score in label.items():
        try:
            score = float(score)
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: answer {answer!r} has the score {score!r}, not a number")
        if answer in answers:
            scores[answers[answer]] = score
    if not scores:
        stats[f"dropped (answer outside the {len(answers)}-answer vocabulary)"] += 1
        return
    if len(scores) < len(label):
        stats["soft labels that lost an answer outside the vocabulary"] += 1
    yield Example(where, qid, question, [str(image)], scores)


def reasoning_examples(path, stats, **unused):
    """NLVR2 (``identifier`` names the pair: ``dev-850-0-0`` -> ``dev-850-0-img0``, ``dev-850-0-img1``) or
    MaRVL (``left_img`` / ``right_img`` file names) statements about two images."""
    for where, rec in _records(path):
        if "identifier" in rec:
            _need(rec, where, "sentence", "label")
            pair = str(rec["identifier"]).rsplit("-", 1)[0]  # the last field numbers the statement
            images, text, example_id = [f"{pair}-img0", f"{pair}-img1"], rec["sentence"], rec["identifier"]
        else:
            _need(rec, where, "left_img", "right_img", "caption", "label")
            images, text, example_id = [str(rec["left_img"]), str(rec["right_img"])], rec["caption"], rec.get("id", where)
        yield Example(where, example_id, text, images, int(_bool(rec["label"], where)))


def flickr_examples(path, stats, **unused):
    for where, rec in _records(path):
        _need(rec, where, "sentences", "img_path")
        if not isinstance(rec["sentences"], list) or not rec["sentences"]:
            raise DatasetError(f"{where}: 'sentences' must be a non-empty list")
        for k, sentence in enumerate(rec["sentences"]):
            yield Example(f"{where} (sentence {k + 1})", rec.get("id", where), sentence, [str(rec["img_path"])], None)


def wit_examples(path, stats, **unused):
    for where, rec in _records(path):
        _need(rec, where, "caption_reference_description", "wit_ix")
        yield Example(where, rec["wit_ix"], rec["caption_reference_description"], [str(rec["wit_ix"])], None)


# task -> (reader, DATA folder or None for retrieval captions, default --max-tokens, what a line is)
TASKS = {
    "xvnli": (xvnli_examples, XVNLI.name, 80, "pairs"),
    "xgqa": (gqa_examples, XGQA.name, 40, "questions"),
    "marvl": (reasoning_examples, MARVL.name, 80, "statements"),
    "xflickrco": (flickr_examples, None, 80, "captions"),
    "wit": (wit_examples, None, 80, "captions"),
}


# ---- answers, images ---------------------------------------------------------------------------------

class _NoGlobals(pickle.Unpickler):
    """A pickled answer vocabulary is a dict of strings and ints: it needs no global, and none is loaded
    (a pickle that names one would run code)."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused: the pickle names {module}.{name} (an answer vocabulary needs none)")


def read_answers(path):
    """{answer: label} of ``trainval_ans2label.json`` (or ``.pkl``), checked to number 0..N-1."""
    if path.endswith(".pkl"):
        try:
            with open(path, "rb") as f:
                doc = _NoGlobals(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise DatasetError(f"{path}: cannot read the answer vocabulary ({e})")
        except OSError as e:
            raise DatasetError(f"{path}: {e.strerror}")
    else:
        doc = _document(path)
    if not isinstance(doc, dict) or not doc:
        raise DatasetError(f"{path}: expected a dict answer -> label (trainval_ans2label)")
    if sorted(v for v in doc.values() if isinstance(v, int)) != list(range(len(doc))):
        raise DatasetError(f"{path}: the labels are not the numbers 0..{len(doc) - 1}, each once")
    return {str(a): v for a, v in doc.items()}


def image_key(ref):
    """What an annotation and a feature store agree on: the file stem, a COCO file name's number."""
    stem = os.path.splitext(ref.replace("\\", "/").rsplit("/", 1)[-1])[0]
    coco = re.match(r"^COCO_[a-z]+\d{4}_0*(\d+)$", stem)
    return coco.group(1) if coco else stem


class ImageMatcher:
    """Finds an annotation's image among a region store's ids: as it is, else by ``image_key``."""

    def __init__(self, store: RegionStore):
        self.ids = set(str(i) for i in store.image_ids)
        self.by_key = {}
        for i in self.ids:
            k = image_key(i)
            self.by_key[k] = None if k in self.by_key else i  # two stored ids of one key: ambiguous
        self.path = store.path

    def find(self, ref, where):
        if ref in self.ids:
            return ref
        found = self.by_key.get(image_key(ref))
        if found is None:
            why = "is ambiguous" if image_key(ref) in self.by_key else "has no features"
            raise DatasetError(f"{where}: image {ref!r} {why} in {self.path}")
        return found


# ---- writing -----------------------------------------------------------------------------------------

def _cut(sp, text, limit, stats):
    """``text`` cut to ``limit`` sentencepiece pieces (decoded back to text, re-checked)."""
    pieces = sp.encode(text, out_type=str)
    if len(pieces) <= limit:
        return text
    stats[f"texts cut to {limit} pieces"] += 1
    keep = limit
    while len(pieces) > limit:  # decoded text can encode into more pieces: keep fewer until it fits
        text = sp.decode(pieces[:keep])
        pieces = sp.encode(text, out_type=str)
        keep -= 1
    return text


def _same_shards(a, b):
    shards = (lambda m: sorted(os.path.realpath(p) for p in manifest_shards(m, read_manifest(m))))
    return shards(a) == shards(b)


def import_split(task, files, lang, split, out, spm, dict_path, regions=None, answers=None, max_tokens=None):
    """Read ``files`` (one split of one language) and write them into ``out``; returns (lines, stats)."""
    import sentencepiece

    read, folder, default_tokens, _ = TASKS[task]
    for what, value in (("--lang", lang), ("--split", split)):
        if not NAME.match(value):
            raise DatasetError(f"{what} {value!r}: letters, digits and _ only (test.de would name a language)")
    for path in (spm, dict_path):
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: no such file")
    retrieval = folder is None
    target_manifest = os.path.join(out, "regions", f"{split}.json" if retrieval else f"{split}.{lang}.json")
    install_store = regions is not None
    if regions is None:  # the store DATA has for the split already (as the tasks resolve it)
        fallback = os.path.join(out, "regions", f"{split}.json")
        regions = target_manifest if os.path.exists(target_manifest) else fallback
        if not os.path.exists(regions):
            raise DatasetError(f"{target_manifest}: no region store for {split} ({lang}): give --regions MANIFEST")
    elif retrieval and os.path.exists(target_manifest) and not _same_shards(regions, target_manifest):
        raise DatasetError(f"{target_manifest}: lists other shards than {regions}; the languages of a retrieval "
                           f"split share one region store")
    answer_labels = None
    if task == "xgqa":
        if not answers:
            raise DatasetError("xgqa needs --answers (IGLUE's trainval_ans2label.json)")
        answer_labels = read_answers(answers)
    matcher = ImageMatcher(RegionStore(regions))
    sp = sentencepiece.SentencePieceProcessor(model_file=spm)
    limit = (max_tokens or default_tokens) - 2  # <s> and </s>
    stats = collections.Counter()
    texts, ids, side = [], [], []
    for path in files:
        for ex in read(path, stats, answers=answer_labels):
            images = [matcher.find(ref, ex.where) for ref in ex.images]
            texts.append(_cut(sp, _clean(ex.text, ex.where), limit, stats))
            if retrieval:
                ids.append(images[0])
            else:
                side.append(side_record(ex.id, images, **({"answers": ex.target} if task == "xgqa" else
                                                           {"label": ex.target})))
    if not texts:
        raise DatasetError(f"{', '.join(files)}: no examples")

    dest = os.path.join(out, "captions" if retrieval else folder, lang)
    with Staging() as staging:  # every file of the split moves into place together, or none
        install_vocabulary(out, spm, dict_path, staging)
        stage = staging.scratch(out)
        raw = os.path.join(stage, "text.txt")
        with open(raw, "w", encoding="utf-8") as f:
            f.writelines(t + "\n" for t in texts)
        if retrieval:  # binarize() copies the ids beside the text after checking them line for line
            with open(os.path.join(stage, "text.ids"), "w", encoding="utf-8") as f:
                f.writelines(i + "\n" for i in ids)
        # (fairseq-preprocess names its outputs train/valid/test: renamed to the split below)
        binarize(spm, dict_path, os.path.join(stage, "bin"), {"train": raw}, progress=False)
        for ext in (("bin", "idx", "ids") if retrieval else ("bin", "idx")):
            os.replace(os.path.join(stage, "bin", f"train.{ext}"), staging.file(os.path.join(dest, f"{split}.{ext}")))
        if not retrieval:
            with open(staging.file(os.path.join(dest, f"{split}.jsonl")), "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in side)
        if answer_labels is not None:
            _install_answers(os.path.join(out, folder, ANSWERS_FILE), answer_labels, answers, staging)
        if install_store and os.path.abspath(regions) != os.path.abspath(target_manifest):
            os.makedirs(os.path.dirname(target_manifest), exist_ok=True)
            merge_manifests(target_manifest, [regions])  # the split's store, its shards where they are
    return len(texts), stats


def _install_answers(path, answers, source, staging):
    """DATA/xgqa/answers.txt, one answer a line in label order; an existing one must be the same."""
    lines = [a for a, _ in sorted(answers.items(), key=lambda kv: kv[1])]
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read().split("\n")[:-1] != lines:
                raise DatasetError(f"{path}: another answer vocabulary than {source} (one DATA folder, one vocabulary)")
        return
    with open(staging.file(path), "w", encoding="utf-8") as f:
        f.writelines(a + "\n" for a in lines)


@command("m3p-import-iglue")
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("files", nargs="+", help="IGLUE annotation files of one split of one language (.jsonl, .json, .zip)")
    p.add_argument("--lang", required=True, help="the texts' language (translate-test: the language of the test set)")
    p.add_argument("--split", required=True, help="train, valid (IGLUE's dev), test, train_{shots}, test_mt, ...")
    p.add_argument("--out", required=True, help="the task's DATA folder")
    p.add_argument("--spm", required=True, help="sentencepiece model (XLM-R's for real runs)")
    p.add_argument("--dict", required=True, help="fairseq dict.txt matching --spm")
    p.add_argument("--regions", help="region manifest with the split's images (default: the one DATA/regions has)")
    p.add_argument("--answers", help="xgqa: the answer vocabulary, trainval_ans2label.json (or .pkl)")
    p.add_argument("--max-tokens", type=int, help="cut longer texts (pieces + <s> + </s>; default IGLUE's: 80, xgqa 40)")
    a = p.parse_args(argv)
    check_writable(a.out, folder=True)
    n, stats = import_split(a.task, a.files, a.lang, a.split, a.out, a.spm, a.dict, a.regions, a.answers, a.max_tokens)
    folder = TASKS[a.task][1] or "captions"
    extra = "".join(f"; {k}: {v}" for k, v in sorted(stats.items()))
    print(f"{a.out}/{folder}/{a.lang}/{a.split}: {n} {TASKS[a.task][3]}{extra}", file=sys.stderr)


if __name__ == "__main__":
    main()
