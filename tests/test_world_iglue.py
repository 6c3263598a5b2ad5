"""The embedded world's IGLUE-style sets: in e-bug/iglue's file shapes (read as its loaders read them), their
images where the annotations say (the world's region store, or volta LMDBs that ``m3p-import-regions lmdb``
imports), labels balanced as designed, the text alone near chance, the same files for the same seed."""
import base64
import collections
import json
import os
import pickle

import lmdb
import numpy as np
import pytest

from m3p_fairseq.data.region_store import RegionStore
from preprocess.detectors import main as import_regions
from preprocess.iglue_world import (MARVL_SHOTS, TEST_LANGS, XFLICKRCO_SHOTS, XGQA_SHOTS, XVNLI_LABELS,
                                    XVNLI_SHOTS)
from preprocess.make_world import CAPTION_LANGS, COLOURS, LOANWORDS, OBJECTS, main as make_world

SMALL = ["--feat-dim", "8", "--train-images", "400", "--valid-images", "100", "--test-images", "30",
         "--text-sentences", "200", "--iglue-train", "1500", "--iglue-test", "90", "--quiet"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("iglue") / "world")
    make_world([out, "--seed", "5"] + SMALL)
    return out


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _store_ids(world, *splits):
    return {i for s in splits for i in RegionStore(os.path.join(world, "regions", f"{s}.json")).image_ids}


def _imported(lmdb_path, tmp_path, name):
    """The LMDB imported through the console command; the store and the LMDB's own dicts."""
    manifest = str(tmp_path / f"{name}.json")
    import_regions(["lmdb", lmdb_path, manifest, "--quiet", "--num-classes", "32"])
    env = lmdb.open(lmdb_path, readonly=True, lock=False)
    with env.begin() as txn:
        raw = {k.decode(): pickle.loads(txn.get(k)) for k in pickle.loads(txn.get(b"keys"))}
    env.close()
    return RegionStore(manifest), raw


def test_xvnli_xgqa_retrieval_in_published_shapes(world):
    root = os.path.join(world, "raw", "iglue")
    images = _store_ids(world, "train", "valid", "test")
    test_ids = _store_ids(world, "test")
    # XVNLI: SNLI-VE records; the test set parallel across languages; translate-test said in English
    x = os.path.join(root, "XVNLI", "annotations")
    en_test = _lines(os.path.join(x, "en", "test.jsonl"))
    for path in [os.path.join(x, "en", f"{s}.jsonl") for s in ("train", "dev")] + \
            [os.path.join(x, lang, "test.jsonl") for lang in CAPTION_LANGS]:
        for r in _lines(path):
            assert set(r) == {"gold_label", "sentence1", "sentence2", "captionID", "pairID", "Flikr30kID"}
            assert r["gold_label"] in XVNLI_LABELS and r["Flikr30kID"] in images and all(isinstance(v, str) for v in r.values())
            assert r["pairID"] == f"{r['captionID']}r1{r['gold_label'][0]}"
    for lang in TEST_LANGS:
        test = _lines(os.path.join(x, lang, "test.jsonl"))
        mt = _lines(os.path.join(root, "XVNLI", "annotations_machine-translate", lang, "test.jsonl"))
        assert [r["pairID"] for r in test] == [r["pairID"] for r in en_test] == [r["pairID"] for r in mt]
        assert [r["sentence2"] for r in mt] == [r["sentence2"] for r in en_test]
        words = {w for r in test for w in r["sentence2"].split()}
        # the world's words its own ("the", colours, objects), the template word shared by every language ("is")
        assert not words & ({"the"} | set(COLOURS) | set(OBJECTS) - LOANWORDS) and "is" in words
        for n in XVNLI_SHOTS:  # shots count images, three hypotheses each, nested
            shots = _lines(os.path.join(x, lang, f"train_{n}.jsonl"))
            assert len(shots) == 3 * n and len({r["Flikr30kID"] for r in shots}) == n
            assert not {r["Flikr30kID"] for r in shots} & {r["Flikr30kID"] for r in en_test}
    # GQA (LXMERT's training form, soft scores) and its answer vocabulary
    ann = os.path.join(root, "gqa", "annotations")
    ans2label, label2ans = _json(os.path.join(ann, "trainval_ans2label.json")), _json(os.path.join(ann, "trainval_label2ans.json"))
    assert [label2ans[i] for i in ans2label.values()] == list(ans2label)
    for split in ("train", "valid"):
        for q in _json(os.path.join(ann, f"{split}.json")):
            assert set(q) == {"img_id", "label", "question_id", "sent"} and q["question_id"].isdigit()
            assert q["img_id"] in images and all(a in ans2label and s == 1.0 for a, s in q["label"].items())
    # xGQA: GQA question dicts, the same questions (ids, images, answers) in every language
    few = os.path.join(root, "xGQA", "annotations", "few_shot")
    en = _json(os.path.join(few, "en", "test.json"))
    for lang in TEST_LANGS:
        test = _json(os.path.join(few, lang, "test.json"))
        mt = _json(os.path.join(root, "xGQA", "annotations_machine-translate", "few_shot", lang, "test_gmt.json"))
        assert list(test) == list(en) == list(mt)
        for qid, q in test.items():
            assert q["imageId"] in test_ids and q["answer"] == en[qid]["answer"] in ans2label
            # (a count question has no word of the world's lexicon: only shared template words, in its word order)
            assert q["question"] != en[qid]["question"] or q["types"]["detailed"] == "count"
            assert mt[qid]["question"] == en[qid]["question"]
            assert {"semantic", "types", "fullAnswer", "isBalanced"} <= set(q) and int(qid)
        for n in XGQA_SHOTS:
            shots = _json(os.path.join(few, lang, f"train_{n}.json"))
            assert len({q["imageId"] for q in shots.values()}) == n
    # Flickr30K / xFlickr&CO: img_path is the region store's id with .jpg; one caption per test image
    for split, ids in (("train", _store_ids(world, "train")), ("test", test_ids)):
        recs = _lines(os.path.join(root, "flickr30k", "annotations", f"{split}_ann.jsonl"))
        assert {r["id"] for r in recs} == ids and all(r["img_path"] == f"{r['id']}.jpg" for r in recs)
        assert all(2 <= len(r["sentences"]) <= 5 for r in recs)
    for lang in CAPTION_LANGS:
        recs = _lines(os.path.join(root, "xFlickrCO", "annotations", lang, "test.jsonl"))
        assert {r["id"] for r in recs} == test_ids and all(len(r["sentences"]) == 1 for r in recs)
        if lang != "en":
            for n in XFLICKRCO_SHOTS[:-1]:
                assert len(_lines(os.path.join(root, "xFlickrCO", "annotations", lang, f"train_{n}.jsonl"))) == n


def test_pair_tasks_in_published_shapes_with_lmdb_features(world, tmp_path):
    root = os.path.join(world, "raw", "iglue")
    store, raw = _imported(os.path.join(root, "nlvr2", "features", "nlvr2_X101.lmdb"), tmp_path, "nlvr2")
    # the store holds what the LMDB holds (npy_to_lmdb's values: base64 float32 features and boxes)
    some = sorted(raw)[:5]
    for image_id in some:
        got, item = store.get(store.index_of(image_id)), raw[image_id]
        feats = np.frombuffer(base64.b64decode(item["features"]), np.float32).reshape(item["num_boxes"], -1)
        np.testing.assert_allclose(got["features"], feats, rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(got["classes"], item["objects"])
        assert (got["width"], got["height"]) == (item["img_w"], item["img_h"])
    for split in ("train", "dev", "test"):
        recs = _lines(os.path.join(root, "nlvr2", "annotations", f"{split}.jsonl"))
        by_sentence = collections.defaultdict(list)
        for r in recs:
            assert r["label"] in ("True", "False") and r["identifier"].startswith(f"{split}-")
            stem = "-".join(r["identifier"].split("-")[:-1])  # as volta's loader finds the two images
            assert {f"{stem}-img0", f"{stem}-img1"} <= set(store.image_ids)
            by_sentence[(stem.rsplit("-", 1)[0], r["identifier"].rsplit("-", 1)[1])].append(r["label"])
        # each statement of a set is true of one of its two pairs and false of the other
        assert all(sorted(labels) == ["False", "True"] for labels in by_sentence.values())
    for lang in TEST_LANGS:
        store, _ = _imported(os.path.join(root, "marvl", "features", f"marvl-{lang}_X101.lmdb"), tmp_path, f"m-{lang}")
        recs = _lines(os.path.join(root, "marvl", "zero_shot", "annotations", f"marvl-{lang}.jsonl"))
        mt = _lines(os.path.join(root, "marvl", "zero_shot", "annotations_machine-translate", f"marvl-{lang}_gmt.jsonl"))
        assert [r["id"] for r in recs] == [r["id"] for r in mt] and [r["label"] for r in recs] == [r["label"] for r in mt]
        for r in recs:
            assert {"concept", "language", "caption", "left_img", "right_img", "annotator_info", "chapter", "id",
                    "label"} == set(r) and isinstance(r["label"], bool) and r["language"] == lang
            assert {r["left_img"][:-4], r["right_img"][:-4]} <= set(store.image_ids) and r["left_img"].endswith(".jpg")
        few_store, _ = _imported(os.path.join(root, "marvl", "few_shot", "features", f"marvl-{lang}_X101.lmdb"),
                                 tmp_path, f"f-{lang}")
        for shots in MARVL_SHOTS:
            recs = _lines(os.path.join(root, "marvl", "few_shot", "annotations", f"marvl-{lang}_train{shots}.jsonl"))
            concepts = int(shots.split("x")[0])
            assert len({r["concept"] for r in recs}) == concepts and len(recs) == concepts * (8 if "x" in shots else 4)
            assert all(r["left_img"][:-4] in few_store.image_ids for r in recs)


def _text_only(train, test):
    """A bag-of-words (and word pairs) logistic regression on the text alone, trained on English train."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = CountVectorizer(ngram_range=(1, 2), token_pattern=r"\S+")
    model = LogisticRegression(max_iter=2000).fit(vec.fit_transform([t for t, _ in train]), [y for _, y in train])
    return float(np.mean(model.predict(vec.transform([t for t, _ in test])) == np.array([y for _, y in test])))


def test_labels_balanced_and_text_alone_near_chance(world):
    root = os.path.join(world, "raw", "iglue")
    x = os.path.join(root, "XVNLI", "annotations", "en")
    xtrain, xdev = _lines(os.path.join(x, "train.jsonl")), _lines(os.path.join(x, "dev.jsonl"))
    assert set(collections.Counter(r["gold_label"] for r in xtrain).values()) == {len(xtrain) // 3}
    assert _text_only([(r["sentence2"], r["gold_label"]) for r in xtrain], [(r["sentence2"], r["gold_label"]) for r in xdev]) < 0.42
    n = os.path.join(root, "nlvr2", "annotations")
    ntrain, ntest = _lines(os.path.join(n, "train.jsonl")), _lines(os.path.join(n, "test.jsonl"))
    assert collections.Counter(r["label"] for r in ntrain)["True"] == len(ntrain) // 2
    assert _text_only([(r["sentence"], r["label"]) for r in ntrain], [(r["sentence"], r["label"]) for r in ntest]) <= 0.55
    ann = os.path.join(root, "gqa", "annotations")
    gtrain = [(q["sent"], next(iter(q["label"]))) for q in _json(os.path.join(ann, "train.json"))]
    gtest = [(q["question"], q["answer"]) for q in _json(os.path.join(root, "xGQA", "annotations", "few_shot", "en", "test.json")).values()]
    majority = collections.Counter(a for _, a in gtrain).most_common(1)[0][0]
    majority_acc = np.mean([a == majority for _, a in gtest])
    assert majority_acc < 0.17  # the most frequent answer is right for about one question in eight
    assert _text_only(gtrain, gtest) < 0.3  # the question's kind, not its answer


def test_same_seed_same_files(tmp_path):
    args = ["--feat-dim", "8", "--train-images", "60", "--valid-images", "20", "--test-images", "10",
            "--text-sentences", "100", "--iglue-train", "120", "--iglue-test", "30", "--quiet"]
    runs = {}
    for name, seed in (("a", "2"), ("b", "2"), ("c", "4")):
        make_world([str(tmp_path / name), "--seed", seed] + args)
        root, files = tmp_path / name / "raw" / "iglue", {}
        for folder, _, names in os.walk(root):
            for f in names:
                path = os.path.join(folder, f)
                if f == "data.mdb":
                    env = lmdb.open(folder, readonly=True, lock=False)
                    with env.begin() as txn:
                        files[os.path.relpath(path, root)] = list(txn.cursor().iternext())
                    env.close()
                elif f != "lock.mdb":
                    files[os.path.relpath(path, root)] = open(path, "rb").read()
        runs[name] = files
    assert runs["a"] == runs["b"]
    assert runs["a"].keys() == runs["c"].keys() and runs["a"] != runs["c"]
