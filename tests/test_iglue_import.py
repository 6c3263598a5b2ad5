"""m3p-import-iglue on files in the shapes e-bug/iglue publishes: what lands in the task folder reads back
through fairseq's loader and sentencepiece, image ids are reconciled with the region store, and each
importer's bad input ends in one line naming the file and the line or id, with nothing written."""
import json
import os
import pickle

import pytest

from preprocess import build_spm
from preprocess.iglue import image_key, main

from . import iglue_files as F
from .test_import_datasets import read_back


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    base = tmp_path_factory.mktemp("iglue_vocab")
    (base / "raw.txt").write_text("\n".join(F.vocab_texts()) + "\n", encoding="utf-8")
    build_spm.train([str(base / "raw.txt")], str(base), vocab_size=90)
    return ["--spm", str(base / "sentencepiece.bpe.model"), "--dict", str(base / "dict.txt")]


def texts(data, folder, split):
    return read_back(data, folder, split)[0]


def side(data, folder, split):
    with open(os.path.join(data, folder, f"{split}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def fails(argv, *needles):
    with pytest.raises(SystemExit) as e:
        main(argv)
    message = str(e.value)
    assert message.startswith("m3p-import-iglue: ") and "\n" not in message, message
    for n in needles:
        assert n in message, message
    return message


def test_image_keys_reconcile_file_names_stems_and_coco_numbers():
    assert image_key("1007129816.jpg") == image_key("1007129816") == "1007129816"
    assert image_key("39-Panci/39-n-5.jpg") == "39-n-5"
    assert image_key("COCO_val2014_000000391895.jpg") == image_key("391895")
    assert image_key("dev-850-0-img0") == "dev-850-0-img0"


def test_xvnli_jsonl_and_zipped_train(tmp_path, vocab):
    root, store_ids = F.write_xvnli(str(tmp_path / "datasets"))
    regions = F.write_store(str(tmp_path / "feats" / "flickr30k.json"), store_ids)
    data = str(tmp_path / "data")
    common = ["--out", data, "--regions", regions] + vocab
    main(["xvnli", f"{root}/en/train.jsonl.zip", "--lang", "en", "--split", "train"] + common)
    main(["xvnli", f"{root}/ar/test.jsonl", "--lang", "ar", "--split", "test"] + common)
    shots = F.jsonl(f"{root}/ar/train_1.jsonl", F.xvnli_records(3, 42, ("لا", "ربما", "نعم")))  # few-shot: its shape
    main(["xvnli", shots, "--lang", "ar", "--split", "train_1"] + common)
    assert len(texts(data, "xvnli/en", "train")) == 30  # the '-' pair skipped
    lines = side(data, "xvnli/en", "train")
    assert [r["label"] for r in lines[:3]] == [0, 1, 2]  # contradiction, neutral, entailment (volta's order)
    assert lines[0]["images"] == ["1000000000.jpg"]  # Flikr30kID 1000000000 is the store's 1000000000.jpg
    assert texts(data, "xvnli/ar", "test")[0].startswith("لا")
    assert len(texts(data, "xvnli/ar", "train_1")) == 3 and len(side(data, "xvnli/ar", "train_1")) == 3
    assert os.path.exists(f"{data}/regions/test.ar.json") and os.path.exists(f"{data}/regions/train.en.json")
    # --max-tokens cuts a longer text to as many pieces (<s> and </s> counted), its start kept
    main(["xvnli", f"{root}/en/train.jsonl.zip", "--lang", "en", "--split", "test", "--max-tokens", "6"] + common)
    full, cut = texts(data, "xvnli/en", "train"), texts(data, "xvnli/en", "test")
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=vocab[1])
    assert len(cut) == len(full) and all(len(sp.encode(t)) == min(4, len(sp.encode(f))) for t, f in zip(cut, full))
    assert all(f.startswith(t) for t, f in zip(cut, full)) and max(len(sp.encode(f)) for f in full) > 4
    # bad input: an image without features, named with file, line and id; nothing of the split written
    bad = F.jsonl(str(tmp_path / "bad.jsonl"), F.xvnli_records(1) + [dict(F.xvnli_records(1)[0], Flikr30kID="42")])
    fails(["xvnli", bad, "--lang", "en", "--split", "valid"] + common, "bad.jsonl: line 2: image '42' has no features")
    assert not [f for f in os.listdir(f"{data}/xvnli/en") if f.startswith("valid")]
    assert not os.path.exists(f"{data}/regions/valid.en.json")
    bad = F.jsonl(str(tmp_path / "bad2.jsonl"), [dict(F.xvnli_records(1)[0], gold_label="unsure")])
    fails(["xvnli", bad, "--lang", "en", "--split", "valid"] + common, "bad2.jsonl: line 1: gold_label 'unsure'")


def test_xgqa_lxmert_soft_labels_and_question_dicts(tmp_path, vocab, capsys):
    gqa, xgqa, store_ids = F.write_gqa(str(tmp_path / "datasets"))
    regions = F.write_store(str(tmp_path / "feats" / "gqa.json"), store_ids)
    data = str(tmp_path / "data")
    common = ["--out", data, "--regions", regions, "--answers", f"{gqa}/trainval_ans2label.json"] + vocab
    main(["xgqa", f"{gqa}/train.json", "--lang", "en", "--split", "train"] + common)
    assert "dropped (answer outside the 4-answer vocabulary): 1" in capsys.readouterr().err
    main(["xgqa", f"{xgqa}/de/test.json", "--lang", "de", "--split", "test"] + common)
    with open(f"{data}/xgqa/answers.txt", encoding="utf-8") as f:
        assert f.read().split("\n")[:-1] == F.GQA_ANSWERS
    lines = side(data, "xgqa/en", "train")
    assert len(lines) == 32 and lines[1] == {"id": "201300001", "images": ["n100001"], "labels": [1, 0],
                                             "scores": [1.0, 0.3]}
    assert [r["labels"] for r in side(data, "xgqa/de", "test")[:2]] == [[0], [1]]  # 'answer' of the question dict
    # the answer vocabulary as a pickle: read without running code; a pickle that would run code is refused
    with open(tmp_path / "ans2label.pkl", "wb") as f:
        pickle.dump({a: k for k, a in enumerate(F.GQA_ANSWERS)}, f)
    main(["xgqa", f"{xgqa}/en/test.json", "--lang", "en", "--split", "test", "--out", data, "--regions", regions,
          "--answers", str(tmp_path / "ans2label.pkl")] + vocab)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(Evil(), f)
    fails(["xgqa", f"{xgqa}/en/test.json", "--lang", "en", "--split", "test", "--out", data, "--regions", regions,
           "--answers", str(tmp_path / "evil.pkl")] + vocab, "evil.pkl: cannot read the answer vocabulary", "refused")
    assert not os.path.exists(tmp_path / "ran")
    # bad input: a question without its image
    qdict = {"7": {"question": "is it red", "answer": "yes"}}
    (tmp_path / "q.json").write_text(json.dumps(qdict))
    fails(["xgqa", str(tmp_path / "q.json"), "--lang", "en", "--split", "valid"] + common,
          "q.json: question 7: no 'imageId'")
    assert not os.path.exists(f"{data}/xgqa/en/valid.jsonl")


def test_nlvr2_and_marvl_two_images_each_language_its_store(tmp_path, vocab):
    nlvr2, marvl, nlvr2_ids, marvl_ids = F.write_marvl(str(tmp_path / "datasets"))
    data = str(tmp_path / "data")
    nl = F.write_store(str(tmp_path / "feats" / "nlvr2.json"), nlvr2_ids)
    mv = F.write_store(str(tmp_path / "feats" / "marvl-id.json"), marvl_ids)
    main(["marvl", f"{nlvr2}/dev.jsonl", "--lang", "en", "--split", "valid", "--out", data, "--regions", nl] + vocab)
    main(["marvl", marvl, "--lang", "id", "--split", "test", "--out", data, "--regions", mv] + vocab)
    first = side(data, "marvl/en", "valid")[0]
    assert first == {"id": "dev-20-0-2", "images": ["dev-20-0-img0", "dev-20-0-img1"], "label": 0}
    assert side(data, "marvl/id", "test")[1] == {"id": "id-1", "images": ["39-1", "39-n-1"], "label": 1}
    assert texts(data, "marvl/id", "test")[0] == "false anjing berlari"
    bad = F.jsonl(str(tmp_path / "bad.jsonl"), [dict(F.marvl_records(1)[0], label="maybe")])
    fails(["marvl", bad, "--lang", "id", "--split", "valid", "--out", data, "--regions", mv] + vocab,
          "bad.jsonl: line 1: label 'maybe' is neither true nor false")
    assert not os.path.exists(f"{data}/marvl/id/valid.jsonl")


def test_xflickrco_and_wit_captions_one_store_per_split(tmp_path, vocab):
    xfc, wit, store_ids = F.write_retrieval(str(tmp_path / "datasets"))
    regions = F.write_store(str(tmp_path / "feats" / "test.json"), store_ids)
    data = str(tmp_path / "data")
    for lang in ("en", "de"):
        main(["xflickrco", f"{xfc}/{lang}/test.jsonl", "--lang", lang, "--split", "test", "--out", data,
              "--regions", regions] + vocab)
    with open(f"{data}/captions/de/test.ids") as f:  # img_path names against the store's stems and COCO number
        assert f.read().split() == ["1007129816", "2487069642", "COCO_val2014_000000391895", "139"]
    assert texts(data, "captions/de", "test")[0] == "ein Hund läuft"
    wit_data = str(tmp_path / "wit_data")
    main(["wit", wit, "--lang", "en", "--split", "test", "--out", wit_data, "--regions", regions] + vocab)
    with open(f"{wit_data}/captions/en/test.ids") as f:
        assert f.read().split() == ["wit-test_0", "wit-test_1", "wit-test_2"]
    # the languages of a retrieval split share one store: another one is refused
    other = F.write_store(str(tmp_path / "feats2" / "test.json"), store_ids, seed=1)
    fails(["xflickrco", f"{xfc}/en/test.jsonl", "--lang", "en", "--split", "test", "--out", data, "--regions", other]
          + vocab, "regions/test.json: lists other shards than")
    bad = F.jsonl(str(tmp_path / "bad.jsonl"), [{"sentences": [" "], "id": "1", "img_path": "1007129816.jpg"}])
    fails(["xflickrco", bad, "--lang", "en", "--split", "valid", "--out", data, "--regions", regions] + vocab,
          "bad.jsonl: line 1 (sentence 1): empty text")
    bad = F.jsonl(str(tmp_path / "bad_wit.jsonl"), [{"caption_reference_description": "a car", "language": "en"}])
    fails(["wit", bad, "--lang", "en", "--split", "valid", "--out", wit_data, "--regions", regions] + vocab,
          "bad_wit.jsonl: line 1: no 'wit_ix'")
    assert not os.path.exists(f"{data}/captions/en/valid.ids") and not os.path.exists(f"{data}/regions/valid.json")
