"""Tiny IGLUE data in the shapes e-bug/iglue publishes (written here), region stores keyed by IGLUE's image
ids, and the m3p-import-iglue calls that turn them into task folders: shared by the IGLUE tests.

Each task has a signal a model can learn in a few updates: the text's first word and the image's
features both follow the label, so validation accuracy moves between epochs.
"""
import json
import os
import zipfile

import numpy as np

from m3p_fairseq.data.region_store import RegionShardWriter, write_manifest

DIM = 8
WORDS = {"xvnli": ("no", "maybe", "yes"), "marvl": ("false", "true")}
GQA_ANSWERS = ["no", "yes", "red", "two"]
FILLER = ["a dog runs on the grass", "two children play with a ball", "a man rides a bike", "a red car",
          "ein Hund läuft über die Wiese", "anjing berlari", "the pot on the right has a lid"]


def vocab_texts():
    words = [w for ws in WORDS.values() for w in ws] + GQA_ANSWERS + ["is", "it", "what", "colour", "لا", "ربما", "نعم"]
    return FILLER * 3 + [" ".join(words)] * 3


def write_store(manifest, ids, label_of=None, seed=0):
    """One shard with ``ids``; an image's features carry its label (``label_of``) in the first dimensions."""
    rng = np.random.default_rng(seed)
    shard = manifest[:-len(".json")] + ".0.h5"
    os.makedirs(os.path.dirname(manifest), exist_ok=True)
    with RegionShardWriter(shard, feat_dim=DIM, num_classes=5) as w:
        for k, image_id in enumerate(ids):
            n = 2 + k % 3
            feats = rng.random((n, DIM)).astype(np.float32)
            if label_of is not None:
                feats[:, label_of(image_id)] += 2.0
            boxes = np.array([[0, 0, 5 + j, 5 + j] for j in range(n)], dtype=np.float32)
            w.add(image_id, feats, boxes, rng.integers(0, 5, n), 20, 20)
    write_manifest(manifest, [shard], DIM, 5, index=True)
    return manifest


def jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return path


def xvnli_records(n, offset=0, lang_words=None):
    """SNLI-VE / XVNLI lines: image k shows class k % 3; the hypothesis begins with that class's word."""
    out = []
    for i in range(offset, offset + n):
        label = i % 3
        image = str(1000000000 + i)  # its image shows class i % 3 (xvnli_image_label)
        word = (lang_words or WORDS["xvnli"])[label]
        out.append({"gold_label": ("contradiction", "neutral", "entailment")[label], "sentence1": "a caption",
                    "sentence2": f"{word} {FILLER[i % 4]}", "captionID": f"{image}.jpg#0",
                    "pairID": f"{image}.jpg#0r{i}", "Flikr30kID": image})
    return out


def xvnli_image_label(image_id):
    return (int(os.path.splitext(image_id)[0]) - 1000000000) % 3


def write_xvnli(root):
    """XVNLI/annotations/{en,ar}/..., train zipped as IGLUE ships it; a '-' label in train (skipped)."""
    base = os.path.join(root, "XVNLI", "annotations")
    train = xvnli_records(30) + [dict(xvnli_records(1)[0], gold_label="-")]
    os.makedirs(os.path.join(base, "en"), exist_ok=True)
    with zipfile.ZipFile(os.path.join(base, "en", "train.jsonl.zip"), "w") as z:
        z.writestr("train.jsonl", "".join(json.dumps(r) + "\n" for r in train))
    jsonl(os.path.join(base, "en", "dev.jsonl"), xvnli_records(12, 30))
    jsonl(os.path.join(base, "en", "test.jsonl"), xvnli_records(9, 42))
    jsonl(os.path.join(base, "ar", "test.jsonl"), xvnli_records(9, 42, ("لا", "ربما", "نعم")))
    images = sorted({r["Flikr30kID"] for r in xvnli_records(60)})
    # the store names Flickr30K images by their file name: reconciled with Flikr30kID's bare number
    return base, [f"{i}.jpg" for i in images]


def gqa_records(n, offset=0):
    """(LXMERT-style list, GQA question dict) of n questions; image k's answer is GQA_ANSWERS[k % 4]."""
    lxmert, qdict = [], {}
    for i in range(offset, offset + n):
        a = i % 4
        image, qid = f"n{100000 + i % 8}", str(201300000 + i)
        question = f"{GQA_ANSWERS[a]} is it {FILLER[i % 3]}"
        label = {GQA_ANSWERS[a]: 1.0}
        if a == 1:  # soft labels: a second answer with a lower score
            label["no"] = 0.3
        lxmert.append({"img_id": image, "label": label, "question_id": qid, "sent": question})
        qdict[qid] = {"question": question, "imageId": image, "answer": GQA_ANSWERS[a], "semantic": [],
                      "isBalanced": True}
    return lxmert, qdict


def write_gqa(root):
    base = os.path.join(root, "gqa", "annotations")
    os.makedirs(base, exist_ok=True)
    train, _ = gqa_records(32)
    train.append({"img_id": "n100000", "label": {"purple": 1.0}, "question_id": "9", "sent": "what colour"})
    with open(os.path.join(base, "train.json"), "w") as f:
        json.dump(train, f)
    with open(os.path.join(base, "valid.json"), "w") as f:
        json.dump(gqa_records(12, 32)[0], f)
    with open(os.path.join(base, "trainval_ans2label.json"), "w") as f:
        json.dump({a: k for k, a in enumerate(GQA_ANSWERS)}, f)
    xgqa = os.path.join(root, "xGQA", "annotations", "few_shot")
    for lang in ("en", "de"):
        os.makedirs(os.path.join(xgqa, lang), exist_ok=True)
        with open(os.path.join(xgqa, lang, "test.json"), "w") as f:
            json.dump(gqa_records(8, 44)[1], f)
    return base, xgqa, [f"n{100000 + k}" for k in range(8)]


def gqa_image_label(image_id):
    return (int(image_id[1:]) - 100000) % 4


def nlvr2_records(split, n, offset=0):
    out = []
    for i in range(offset, offset + n):
        label = i % 2
        out.append({"sentence": f"{WORDS['marvl'][label]} {FILLER[i % 4]}", "label": "True" if label else "False",
                    "identifier": f"{split}-{i}-0-{i % 3}", "left_url": "http://x/l.png", "right_url": "http://x/r.png"})
    return out


def marvl_records(n):
    return [{"concept": "39-Panci", "language": "id", "caption": f"{WORDS['marvl'][i % 2]} anjing berlari",
             "left_img": f"39-Panci/39-{i}.jpg", "right_img": f"39-Panci/39-n-{i}.jpg", "annotator_info": {},
             "chapter": "Basic actions and technology", "id": f"id-{i}", "label": bool(i % 2)} for i in range(n)]


def write_marvl(root):
    """NLVR2 (English train/dev/test) and MaRVL's Indonesian test, each with its own store."""
    nlvr2 = os.path.join(root, "nlvr2", "annotations")
    for split, n, off in (("train", 20, 0), ("dev", 8, 20), ("test", 8, 28)):
        jsonl(os.path.join(nlvr2, f"{split}.jsonl"), nlvr2_records(split, n, off))
    marvl = jsonl(os.path.join(root, "marvl", "zero_shot", "annotations", "marvl-id.jsonl"), marvl_records(6))
    nlvr2_ids = [f"{s}-{i}-0-img{k}" for s, n, off in (("train", 20, 0), ("dev", 8, 20), ("test", 8, 28))
                 for i in range(off, off + n) for k in (0, 1)]
    marvl_ids = [f"39-{i}" for i in range(6)] + [f"39-n-{i}" for i in range(6)]
    return nlvr2, marvl, nlvr2_ids, marvl_ids


def nlvr2_image_label(image_id):
    return int(image_id.split("-")[1]) % 2


def write_retrieval(root):
    """xFlickr&CO tests (Flickr30K and COCO images, one caption each) and WIT's."""
    base = os.path.join(root, "xFlickrCO", "annotations")
    images = ["1007129816.jpg", "2487069642.jpg", "COCO_val2014_000000391895.jpg", "COCO_val2014_000000000139.jpg"]
    for lang, caps in (("en", ["a dog runs", "a man rides a bike", "two children play", "a red car"]),
                       ("de", ["ein Hund läuft", "ein Mann", "zwei Kinder", "ein rotes Auto"])):
        jsonl(os.path.join(base, lang, "test.jsonl"),
              [{"sentences": [c], "id": os.path.splitext(i)[0], "img_path": i} for c, i in zip(caps, images)])
    wit = jsonl(os.path.join(root, "wit", "annotations", "test_en.jsonl"),
                [{"image_idx": k, "image_url": "http://x", "meta_url": "http://x", "language": "en",
                  "caption_reference_description": c, "page_url": "http://x", "wit_ix": f"wit-test_{k}"}
                 for k, c in enumerate(["a red car", "two children play", "a man rides a bike"])])
    # features keyed as the mmf extractor names them (file stems), and one COCO image by its number
    store_ids = ["1007129816", "2487069642", "COCO_val2014_000000391895", "139"] + [f"wit-test_{k}" for k in range(3)]
    return base, wit, store_ids
