"""Shapes, weight ties, XLM-R layout and the joint sequence of the understanding model."""
import argparse

import pytest
import torch
from fairseq.models.transformer import TransformerEncoder

from m3p_fairseq.models.m3p import M3PModel, m3p_base, m3p_tiny


class _Task:
    def __init__(self, dictionary, feat_dim=24, classes=7):
        self.source_dictionary = dictionary
        self.region_feat_dim, self.num_region_classes = feat_dim, classes


@pytest.fixture(scope="module")
def model(task):
    t, _ = task
    args = argparse.Namespace(arch="m3p_tiny", tokens_per_sample=128)
    m3p_tiny(args)
    torch.manual_seed(0)
    m = M3PModel.build_model(args, _Task(t.dictionary))
    m.eval()
    return m


def _batch(model, bsz=3, text=9, regions=5, feat=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = model.encoder.dictionary
    src = torch.randint(d.nspecial, len(d) - 1, (bsz, text), generator=g)
    src[:, 0], src[:, -1] = d.bos(), d.eos()
    src[0, -3:] = d.pad()
    pad = torch.zeros(bsz, regions, dtype=torch.bool)
    pad[1, -2:] = True
    return {"src_tokens": src, "regions": torch.rand(bsz, regions, feat, generator=g),
            "region_boxes": torch.rand(bsz, regions, 5, generator=g), "region_padding_mask": pad}


def test_shapes_of_every_head(model):
    b = _batch(model)
    masked_tokens = b["src_tokens"].ne(1) & (torch.rand(b["src_tokens"].shape) < 0.5)
    masked_regions = ~b["region_padding_mask"] & (torch.rand(3, 5) < 0.5)
    out = model(**b, masked_tokens=masked_tokens, masked_regions=masked_regions, vlm=True)
    assert out["features"].shape == (3, 9 + 5, 128)
    assert out["lm_logits"].shape == (int(masked_tokens.sum()), len(model.encoder.dictionary))
    assert out["mrm_feat"].shape == (int(masked_regions.sum()), 24)
    assert out["mrm_cls"].shape == (int(masked_regions.sum()), 7)
    assert out["vlm_logits"].shape == (3,)


def test_lm_head_is_tied_to_the_token_embeddings(model):
    assert model.encoder.lm_head.weight is model.encoder.sentence_encoder.embed_tokens.weight
    assert model.encoder.mrm_feat_head.out_proj.weight is not model.encoder.mrm_cls_head.out_proj.weight


def test_text_only_is_the_stock_xlmr_encoder(model):
    """Without regions the text path is fairseq's TransformerEncoder unchanged (XLM-R parity)."""
    b = _batch(model)
    ours = model(b["src_tokens"], features_only=True)["features"]
    stock = TransformerEncoder.forward(model.encoder.sentence_encoder, b["src_tokens"])["encoder_out"][0]
    torch.testing.assert_close(ours, stock.transpose(0, 1))


def test_padded_regions_change_nothing(model):
    b = _batch(model)
    out = model(**b, vlm=True)
    more = dict(b)
    more["regions"] = torch.cat([b["regions"], torch.rand(3, 2, 24)], 1)
    more["region_boxes"] = torch.cat([b["region_boxes"], torch.rand(3, 2, 5)], 1)
    more["region_padding_mask"] = torch.cat([b["region_padding_mask"], torch.ones(3, 2, dtype=torch.bool)], 1)
    out2 = model(**more, vlm=True)
    torch.testing.assert_close(out["vlm_logits"], out2["vlm_logits"])
    torch.testing.assert_close(out["features"][:, :14], out2["features"][:, :14])


def test_regions_reach_the_cls_output(model):
    b = _batch(model)
    x1 = model(**b, vlm=True)["vlm_logits"]
    b["regions"] = b["regions"].flip(0)
    x2 = model(**b, vlm=True)["vlm_logits"]
    assert not torch.allclose(x1, x2)


def test_base_architecture_is_the_papers():
    args = argparse.Namespace()
    m3p_base(args)
    assert (args.encoder_layers, args.encoder_embed_dim, args.encoder_attention_heads) == (12, 768, 12)
    assert args.activation_fn == "gelu" and args.dropout == 0.1 and args.max_positions == 512


def test_xlmr_parameter_names(model):
    names = set(model.state_dict())
    for key in ("encoder.sentence_encoder.embed_tokens.weight", "encoder.sentence_encoder.embed_positions.weight",
                "encoder.sentence_encoder.layernorm_embedding.weight",
                "encoder.sentence_encoder.layers.0.self_attn.q_proj.weight",
                "encoder.sentence_encoder.layers.0.fc1.weight", "encoder.lm_head.dense.weight",
                "encoder.lm_head.layer_norm.weight", "encoder.lm_head.bias"):
        assert key in names, key


def test_store_dimension_mismatch_is_refused(task):
    t, _ = task
    args = argparse.Namespace(arch="m3p_tiny", tokens_per_sample=128, region_feat_dim=99)
    m3p_tiny(args)
    with pytest.raises(ValueError, match="--region-feat-dim 99 does not match the region store"):
        M3PModel.build_model(args, _Task(t.dictionary))
