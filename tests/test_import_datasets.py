"""Dataset importers: each raw format (written here, tiny) lands in the task layout and reads back.

Reading back goes through fairseq's own loader and dictionary, then sentencepiece's decoder, so a
caption that comes out equal went through the whole path: raw -> pieces -> ids -> .bin/.idx.
"""
import gzip
import json
import os

import pytest
import sentencepiece as spm
from fairseq.data import Dictionary, data_utils

from preprocess import build_spm
from preprocess.datasets import main

CAPTIONS = ["a dog runs on the grass", "two children play with a ball", "a man rides a bike",
            "ein Hund läuft über die Wiese", "zwei Kinder spielen", "un chien court", "pes běží po trávě",
            "草の上を犬が走る", "一只狗在草地上跑", "a woman reads a book", "news about the city council"]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    base = tmp_path_factory.mktemp("vocab")
    (base / "raw.txt").write_text("\n".join(CAPTIONS * 3) + "\n", encoding="utf-8")
    build_spm.train([str(base / "raw.txt")], str(base), vocab_size=120)
    return ["--spm", str(base / "sentencepiece.bpe.model"), "--dict", str(base / "dict.txt")]


def read_back(data, folder, split):
    """(texts, ids or None) of DATA/folder/split, decoded through fairseq's dataset and sentencepiece."""
    d = Dictionary.load(os.path.join(data, "dict.txt"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(data, "sentencepiece.bpe.model"))
    ds = data_utils.load_indexed_dataset(os.path.join(data, folder, split), d)
    assert ds is not None, f"{folder}/{split} missing"
    texts = [sp.decode(d.string(ds[i]).split()) for i in range(len(ds))]
    ids_path = os.path.join(data, folder, f"{split}.ids")
    ids = open(ids_path, encoding="utf-8").read().split("\n")[:-1] if os.path.exists(ids_path) else None
    return texts, ids


def test_conceptual_captions_with_only_ids(tmp_path, vocab):
    (tmp_path / "Train_GCC-training.tsv").write_text(
        "a dog runs on the grass\thttp://x/1.jpg\ntwo children play with a ball\thttp://x/2.jpg\n"
        "a man rides a bike\thttp://x/3.jpg\n", encoding="utf-8")
    (tmp_path / "val.tsv").write_text("a woman reads a book\thttp://x/9.jpg\n", encoding="utf-8")
    (tmp_path / "have.txt").write_text("0\n2\n")  # image 1 has no features (dead URL)
    data = str(tmp_path / "data")
    main(["cc", "--train", str(tmp_path / "Train_GCC-training.tsv"), "--out", data, "--only-ids",
          str(tmp_path / "have.txt")] + vocab)
    assert read_back(data, "captions/en", "train") == (["a dog runs on the grass", "a man rides a bike"], ["0", "2"])
    data2 = str(tmp_path / "data2")
    main(["cc", "--valid", str(tmp_path / "val.tsv"), "--out", data2, "--id-from", "url"] + vocab)
    assert read_back(data2, "captions/en", "valid") == (["a woman reads a book"], ["http://x/9.jpg"])
    assert os.path.exists(os.path.join(data, "dict.txt")) and os.path.exists(os.path.join(data, "sentencepiece.bpe.model"))


def _gz(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _txt(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def test_multi30k_five_captions_en_de_one_fr_cs(tmp_path, vocab):
    root = str(tmp_path / "multi30k" / "data")
    images = {"train": ["100.jpg", "101.jpg"], "val": ["200.jpg"], "test_2016_flickr": ["300.jpg"]}
    for t1, imgs in images.items():
        _txt(f"{root}/task1/image_splits/{t1}.txt", imgs)
        t2 = {"test_2016_flickr": "test_2016"}.get(t1, t1)
        _txt(f"{root}/task2/image_splits/{t2}_images.txt", imgs)
        for lang in ("en", "de", "fr", "cs"):
            _gz(f"{root}/task1/raw/{t1}.{lang}.gz", [CAPTIONS[5 + i] for i in range(len(imgs))])
        for k in range(1, 6):
            for lang in ("en", "de"):
                _gz(f"{root}/task2/raw/{t2}.{k}.{lang}.gz", [CAPTIONS[k - 1]] * len(imgs))
    data = str(tmp_path / "data")
    main(["multi30k", root, "--out", data] + vocab)
    texts, ids = read_back(data, "captions/en", "train")
    assert len(texts) == 10 and ids == ["100", "101"] * 5 and texts[:2] == [CAPTIONS[0]] * 2
    texts, ids = read_back(data, "captions/fr", "test")
    assert (texts, ids) == ([CAPTIONS[5]], ["300"])
    assert read_back(data, "captions/cs", "valid")[1] == ["200"]
    assert len(read_back(data, "captions/de", "valid")[0]) == 5

    # a caption file one line short of its image list is named
    _gz(f"{root}/task1/raw/train.fr.gz", ["only one"])
    with pytest.raises(SystemExit) as e:
        main(["multi30k", root, "--out", str(tmp_path / "d2"), "--langs", "fr"] + vocab)
    assert "train.fr: 1 captions for 2 images" in str(e.value)


def _karpathy(path):
    doc = {"dataset": "coco", "images": [
        {"filename": "COCO_train2014_000000000009.jpg", "cocoid": 9, "split": "train",
         "sentences": [{"raw": CAPTIONS[0], "tokens": []}, {"raw": CAPTIONS[1]}]},
        {"filename": "COCO_val2014_000000000042.jpg", "cocoid": 42, "split": "restval", "sentences": [{"raw": CAPTIONS[2]}]},
        {"filename": "COCO_val2014_000000000139.jpg", "cocoid": 139, "split": "val", "sentences": [{"raw": CAPTIONS[9]}]},
        {"filename": "COCO_val2014_000000000150.jpg", "cocoid": 150, "split": "test", "sentences": [{"raw": CAPTIONS[3]}]},
        {"filename": "COCO_val2014_000000000151.jpg", "cocoid": 151, "split": "test", "sentences": [{"raw": CAPTIONS[4]}]}]}
    path.write_text(json.dumps(doc))
    return str(path)


def test_coco_karpathy_with_1k_style_test(tmp_path, vocab):
    js = _karpathy(tmp_path / "dataset_coco.json")
    data = str(tmp_path / "data")
    main(["coco", js, "--out", data, "--test-images", "1"] + vocab)
    assert read_back(data, "captions/en", "train") == (CAPTIONS[:3], ["9", "9", "42"])
    assert read_back(data, "captions/en", "valid") == ([CAPTIONS[9]], ["139"])
    assert read_back(data, "captions/en", "test") == ([CAPTIONS[3]], ["150"])


def test_stair_by_karpathy_split_and_coco_cn(tmp_path, vocab):
    js = _karpathy(tmp_path / "dataset_coco.json")
    stair = {"images": [{"id": 9}, {"id": 139}], "annotations": [
        {"id": 1, "image_id": 9, "caption": CAPTIONS[7]}, {"id": 2, "image_id": 139, "caption": CAPTIONS[7] + "。"}]}
    (tmp_path / "stair_train.json").write_text(json.dumps(stair, ensure_ascii=False), encoding="utf-8")
    data = str(tmp_path / "ja")
    main(["stair", "--train", str(tmp_path / "stair_train.json"), "--karpathy", js, "--out", data] + vocab)
    assert read_back(data, "captions/ja", "train")[1] == ["9"]
    assert read_back(data, "captions/ja", "valid")[1] == ["139"]

    cn = tmp_path / "coco-cn"
    _txt(str(cn / "coco-cn_train.txt"), ["COCO_train2014_000000000009"])
    _txt(str(cn / "coco-cn_val.txt"), ["COCO_val2014_000000000139"])
    _txt(str(cn / "coco-cn_test.txt"), ["COCO_val2014_000000000150"])
    _txt(str(cn / "imageid.human-written-caption.txt"),
         [f"COCO_train2014_000000000009#0\t{CAPTIONS[8]}", f"COCO_val2014_000000000139#0\t{CAPTIONS[8]}",
          f"COCO_val2014_000000000150#1\t{CAPTIONS[8]}"])
    data = str(tmp_path / "zh")
    main(["coco-cn", str(cn), "--out", data] + vocab)
    assert read_back(data, "captions/zh", "test") == ([CAPTIONS[8]], ["150"])  # cocoid, as COCO's features
    _txt(str(cn / "imageid.human-written-caption.txt"), [f"COCO_val2014_000000000777#0\t{CAPTIONS[8]}"])
    with pytest.raises(SystemExit) as e:
        main(["coco-cn", str(cn), "--out", str(tmp_path / "zh2")] + vocab)
    assert "line 1: image 'COCO_val2014_000000000777' is in no split list" in str(e.value)


def test_xnli_pairs_and_fixed_label_ids(tmp_path, vocab):
    x = tmp_path / "XNLI-1.0"
    header = "language\tgold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t" \
             "sentence2_parse\tsentence1\tsentence2\tpromptID\tpairID\tgenre"
    for name, rows in (("xnli.dev.tsv", [("en", "neutral", CAPTIONS[0], CAPTIONS[1]),
                                         ("de", "entailment", CAPTIONS[3], CAPTIONS[4])]),
                       ("xnli.test.tsv", [("de", "contradiction", CAPTIONS[4], CAPTIONS[3])])):
        _txt(str(x / name), [header] + [f"{l}\t{g}\t(x)\t(y)\t(x)\t(y)\t{a}\t{b}\t1\t1\tfiction" for l, g, a, b in rows])
    mt = tmp_path / "XNLI-MT-1.0" / "multinli"
    _txt(str(mt / "multinli.train.en.tsv"), ["premise\thypo\tlabel", f"{CAPTIONS[0]}\t{CAPTIONS[2]}\tcontradictory",
                                             f"{CAPTIONS[1]}\t{CAPTIONS[9]}\tentailment"])
    data = str(tmp_path / "data")
    main(["xnli", str(x), "--train-dir", str(mt), "--langs", "en,de", "--out", data] + vocab)
    assert read_back(data, "xnli/en/input0", "train")[0] == [CAPTIONS[0], CAPTIONS[1]]
    assert read_back(data, "xnli/en/input1", "train")[0] == [CAPTIONS[2], CAPTIONS[9]]
    assert read_back(data, "xnli/de/input1", "test")[0] == [CAPTIONS[3]]
    labels = Dictionary.load(os.path.join(data, "xnli/en/label/dict.txt"))
    ds = data_utils.load_indexed_dataset(os.path.join(data, "xnli/en/label/train"), labels)
    assert [labels[int(ds[i][0])] for i in range(len(ds))] == ["contradiction", "entailment"]
    assert [labels.index(n) for n in ("entailment", "neutral", "contradiction")] == [4, 5, 6]

    _txt(str(x / "xnli.test.tsv"), [header, "de\tmaybe\t(x)\t(y)\t(x)\t(y)\ta\tb\t1\t1\tfiction"])
    with pytest.raises(SystemExit) as e:
        main(["xnli", str(x), "--langs", "de", "--out", str(tmp_path / "d2")] + vocab)
    assert "xnli.test.tsv: line 2: label 'maybe'" in str(e.value)


def test_muse_dictionaries(tmp_path):
    (tmp_path / "en-de.txt").write_text("dog Hund\ndog\tHund\ncat Katze\ndog Köter\n", encoding="utf-8")
    main(["muse", str(tmp_path / "en-de.txt"), "--out", str(tmp_path / "data")])
    assert (tmp_path / "data" / "dictionaries" / "en-de.tsv").read_text(encoding="utf-8") == \
        "dog\tHund\ncat\tKatze\ndog\tKöter\n"
    (tmp_path / "en-fr.txt").write_text("dog chien\nbad line here\n")
    with pytest.raises(SystemExit) as e:
        main(["muse", str(tmp_path / "en-fr.txt"), "--out", str(tmp_path / "data")])
    assert "en-fr.txt: line 2: expected 'word translation', found 3 fields" in str(e.value)


def test_wiki_ntg_and_mild(tmp_path, vocab):
    _txt(str(tmp_path / "wiki" / "de.txt"), [CAPTIONS[3], CAPTIONS[4], CAPTIONS[3]])
    _txt(str(tmp_path / "wiki" / "en.txt"), CAPTIONS[:4])
    data = str(tmp_path / "data")
    main(["wiki", str(tmp_path / "wiki" / "de.txt"), str(tmp_path / "wiki" / "en.txt"), "--valid-lines", "1",
          "--out", data] + vocab)
    assert read_back(data, "text/de", "train") == ([CAPTIONS[3], CAPTIONS[4]], None)
    assert read_back(data, "text/en", "valid")[0] == [CAPTIONS[3]]

    ntg = tmp_path / "NTG"
    _txt(str(ntg / "xglue.ntg.en.src.train"), [CAPTIONS[10] + " " + CAPTIONS[0], CAPTIONS[2]])
    _txt(str(ntg / "xglue.ntg.en.tgt.train"), [CAPTIONS[10], CAPTIONS[1]])
    _txt(str(ntg / "xglue.ntg.de.src.dev"), [CAPTIONS[3]])
    _txt(str(ntg / "xglue.ntg.de.tgt.dev"), [CAPTIONS[4]])
    main(["ntg", str(ntg), "--out", str(tmp_path / "ntg_data")] + vocab)
    assert read_back(str(tmp_path / "ntg_data"), "ntg/en/tgt", "train")[0] == [CAPTIONS[10], CAPTIONS[1]]
    assert read_back(str(tmp_path / "ntg_data"), "ntg/de/src", "valid")[0] == [CAPTIONS[3]]

    _txt(str(tmp_path / "MILD" / "en" / "train.tsv"), [f"{CAPTIONS[0]}\timg7\t{CAPTIONS[10]}"])
    main(["mild", str(tmp_path / "MILD"), "--langs", "en", "--out", str(tmp_path / "mild_data")] + vocab)
    assert read_back(str(tmp_path / "mild_data"), "captions/en", "train") == ([CAPTIONS[0]], ["img7"])
    assert read_back(str(tmp_path / "mild_data"), "mild/en/context", "train")[0] == [CAPTIONS[10]]


def test_bad_lines_are_one_line_and_nothing_is_written(tmp_path, vocab):
    (tmp_path / "cc.tsv").write_text("a dog\thttp://x/1.jpg\n \thttp://x/2.jpg\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["cc", "--train", str(tmp_path / "cc.tsv"), "--out", str(tmp_path / "data")] + vocab)
    assert "cc.tsv: line 2: empty text" in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "data" / "captions")
    (tmp_path / "cc.tsv").write_text("a dog http://x/1.jpg\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["cc", "--train", str(tmp_path / "cc.tsv"), "--out", str(tmp_path / "data")] + vocab)
    assert "line 1: expected caption<TAB>url, found 1 fields" in str(e.value)
    (tmp_path / "k.json").write_text("[1, 2]")
    with pytest.raises(SystemExit) as e:
        main(["coco", str(tmp_path / "k.json"), "--out", str(tmp_path / "data")] + vocab)
    assert "k.json: no 'images' list" in str(e.value)


def test_same_vocabulary_by_pieces_not_bytes(tiny_world, tmp_path):
    """A sentencepiece model trained twice on the same text has the same pieces (a model file also
    records where it was trained): importing into a DATA folder made by an earlier run is allowed;
    a model with other pieces is refused."""
    from preprocess.build_spm import train
    from preprocess.datasets import same_vocabulary

    text = os.path.join(tiny_world["world"], "raw", "captions", "train.en.txt")
    for name, size in (("a", 60), ("b", 60), ("c", 80)):
        train([text], str(tmp_path / name), vocab_size=size)
    a, b, c = (str(tmp_path / n / "sentencepiece.bpe.model") for n in "abc")
    assert same_vocabulary(a, b) and not same_vocabulary(a, c)
    assert same_vocabulary(str(tmp_path / "a" / "dict.txt"), str(tmp_path / "b" / "dict.txt"))
