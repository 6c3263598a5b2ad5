"""The hub: encode/decode, features, and the VLM score and ranking, from a checkpoint trained by the CLI."""
import os

import numpy as np
import pytest
import torch

from m3p_fairseq import M3PHub
from m3p_fairseq.data.region_store import RegionStore
from m3p_fairseq.errors import M3PInputError

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
    with pytest.raises(M3PInputError, match="need a generation model"):
        hub.caption("test_000000", "en")
    with pytest.raises(M3PInputError, match="need a generation model"):
        hub.translate("a dog", None, "en", "de")
