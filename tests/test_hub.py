"""The hub: encode/decode, features, and the VLM score and ranking, from a checkpoint trained by the CLI."""
import os

import numpy as np
import pytest
import torch

from m3p_fairseq import M3PHub
from m3p_fairseq.data.region_store import RegionStore
from m3p_fairseq.errors import M3PInputError
from m3p_fairseq.models.m3p import M3PModel
from m3p_fairseq.models.m3p_seq2seq import M3PSeq2SeqModel

from .conftest import BIN, run


@pytest.fixture(scope="module")
def hub(tiny_world, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("hubck"))
    run([os.path.join(BIN, "fairseq-train"), tiny_world["data"], "--user-dir", "m3p_fairseq", "--task",
         "multitask_multimodal", "--arch", "m3p_tiny", "--criterion", "m3p_pretrain", "--optimizer", "adam",
         "--lr", "1e-3", "--max-update", "3", "--batch-size", "8", "--cpu", "--save-dir", save,
         "--no-epoch-checkpoints", "--disable-validation"])
    return M3PHub.from_pretrained(os.path.join(save, "checkpoint_last.pt"), data_name_or_path=tiny_world["data"])


def test_encode_decode_round_trip(hub):
    t = hub.encode("a red dog left of a blue car")
    assert t[0] == hub.dictionary.bos() and t[-1] == hub.dictionary.eos()
    assert hub.decode(t) == "a red dog left of a blue car"


def test_score_and_rank(hub, tiny_world):
    store = RegionStore(os.path.join(tiny_world["data"], "regions", "test.json"))
    image = store.image_ids[0]
    texts = ["a red dog left of a blue car", "a green cup above a black kite"]
    ranked = hub.rank(image, texts, store=store)
    assert sorted(t for t, _ in ranked) == sorted(texts)
    assert all(0.0 <= p <= 1.0 for _, p in ranked) and ranked[0][1] >= ranked[1][1]
    s = hub.score(image, texts[1], store=store)
    assert abs(s - dict(ranked)[texts[1]]) < 1e-6
    # the same image as arrays (pixel boxes + size) gives the same score
    item = store.get(0)
    s2 = hub.score(item["features"], texts[1], boxes=item["boxes"], width=item["width"], height=item["height"])
    assert abs(s - s2) < 1e-5


def test_features_with_and_without_regions(hub):
    t = hub.encode("a red dog")
    assert hub.extract_features(t).shape == (1, len(t), 128)
    feats = torch.rand(3, 32)
    boxes = torch.rand(3, 5)
    assert hub.extract_features(t, feats, boxes).shape == (1, len(t) + 3, 128)


def test_bad_calls(hub):
    with pytest.raises(M3PInputError, match="without a region store"):
        hub.score("test_000000", "a dog")
    with pytest.raises(M3PInputError, match="need the image width and height"):
        hub.score(np.ones((2, 32)), "a dog", boxes=np.ones((2, 4)))
    with pytest.raises(M3PInputError, match="need an M3P generation model"):
        hub.caption("test_000000", "en")
    with pytest.raises(M3PInputError, match="need an M3P generation model"):
        hub.translate("a dog", None, "en", "de")


@pytest.fixture(scope="module")
def gen_checkpoint(tiny_world, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("hubgen"))
    run([os.path.join(BIN, "fairseq-train"), tiny_world["data"], "--user-dir", "m3p_fairseq", "--task",
         "multitask_multimodal", "--arch", "m3p_seq2seq_tiny", "--criterion", "m3p_generation", "--objectives",
         "xdae,ic", "--objective-ratios", "1,1", "--caption-langs", "en,de", "--optimizer", "adam", "--lr", "1e-3",
         "--max-update", "2", "--batch-size", "8", "--cpu", "--save-dir", save, "--no-epoch-checkpoints",
         "--disable-validation"])
    return os.path.join(save, "checkpoint_last.pt")


@pytest.fixture(scope="module")
def gen_hub(gen_checkpoint, tiny_world):
    return M3PSeq2SeqModel.from_pretrained(gen_checkpoint, data_name_or_path=tiny_world["data"])


def test_model_classes_return_the_plugin_hub(hub, gen_hub, gen_checkpoint, tiny_world):
    # as RobertaModel.from_pretrained returns a RobertaHubInterface (not RoBERTa's GPT-2 BPE here)
    und_checkpoint = hub.cfg.checkpoint.save_dir + "/checkpoint_last.pt"
    und = M3PModel.from_pretrained(und_checkpoint, data_name_or_path=tiny_world["data"])
    assert type(und) is M3PHub and isinstance(und.model, M3PModel) and not und.training
    assert type(gen_hub) is M3PHub and isinstance(gen_hub.model, M3PSeq2SeqModel)
    assert und.decode(und.encode("a red dog")) == "a red dog" == gen_hub.decode(gen_hub.encode("a red dog", "en"))
    with pytest.raises(M3PInputError, match=r"holds a M3PSeq2SeqModel, not a M3PModel; load it with "
                                            r"M3PSeq2SeqModel.from_pretrained") as e:
        M3PModel.from_pretrained(gen_checkpoint, data_name_or_path=tiny_world["data"])
    assert "\n" not in str(e.value) and gen_checkpoint in str(e.value)
    with pytest.raises(M3PInputError, match="holds a M3PModel, not a M3PSeq2SeqModel"):
        M3PSeq2SeqModel.from_pretrained(und_checkpoint, data_name_or_path=tiny_world["data"])


def test_generation_model_features(gen_hub):
    t = gen_hub.encode("a red dog", "en")
    dim = gen_hub.model.args.encoder_embed_dim
    feats = gen_hub.extract_features(t, lang="en")  # was a TypeError (int > tuple of positions)
    assert feats.shape == (1, len(t), dim)
    # the encoder reads the language: another language id gives other features
    assert not torch.allclose(feats, gen_hub.extract_features(t, lang="de"))
    with_regions = gen_hub.extract_features(t, torch.rand(3, 32), torch.rand(3, 5), lang="en")
    assert with_regions.shape == (1, len(t) + 3, dim)
    last, layers = gen_hub.extract_features(t, lang="en", return_all_hiddens=True)
    assert len(layers) == gen_hub.model.args.encoder_layers + 1 and torch.allclose(layers[-1], last)
    too_long = torch.full((gen_hub._source_positions() + 1,), 5, dtype=torch.long)
    with pytest.raises(M3PInputError, match="more than the model's"):
        gen_hub.extract_features(too_long, lang="en")


def test_each_model_kind_refuses_the_other_kinds_methods_in_one_line(hub, gen_hub):
    calls = [
        (lambda: gen_hub.extract_features(gen_hub.encode("a dog")), "needs lang="),
        (lambda: gen_hub.score(np.ones((2, 32)), "a dog", boxes=np.ones((2, 5))), "score/rank use the VLM head"),
        (lambda: gen_hub.rank(np.ones((2, 32)), ["a dog"], boxes=np.ones((2, 5))), "score/rank use the VLM head"),
        (lambda: gen_hub.extract_features(gen_hub.encode("a dog"), lang="xx"), "language 'xx' is not one of"),
        (lambda: hub.caption(np.ones((2, 32)), "en", boxes=np.ones((2, 5))), "need an M3P generation model"),
        (lambda: hub.translate("a dog", None, "en", "de"), "need an M3P generation model"),
    ]
    for call, message in calls:
        with pytest.raises(M3PInputError, match=message) as e:
            call()
        assert "\n" not in str(e.value)
