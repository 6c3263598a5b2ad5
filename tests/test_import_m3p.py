"""Import of the official M3P release layout: text stream parity, mapped heads, sequence layouts, bad input.

The checkpoint is built here with the reference's key names and shapes (microsoft/M3P,
src/model/transformer.py), and the reference's text-stream forward is written out below in plain
torch, so the test needs no code from that repository.
"""
import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F

from m3p_fairseq import M3PHub
from preprocess import build_spm
from preprocess.import_m3p import import_m3p, main

C, LAYERS, HEADS, FEAT, CLASSES, NPOS, NLANGS = 32, 2, 4, 24, 7, 514, 3
EPS = 1e-12  # the reference's LayerNorm epsilon (fairseq uses 1e-5)
TEXT = ["a dog runs on the grass", "ein Hund läuft über die Wiese", "un chien court sur l'herbe",
        "two children play with a red ball", "zwei Kinder spielen mit einem Ball"]


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("spm")
    raw = base / "raw.txt"
    raw.write_text("\n".join(TEXT * 4) + "\n", encoding="utf-8")
    build_spm.train([str(raw)], str(base / "spm"), vocab_size=80)
    return str(base / "spm")


def _vocab(spm_dir):
    with open(os.path.join(spm_dir, "dict.txt"), encoding="utf-8") as f:
        return 4 + sum(1 for _ in f) + 1


def release_state(vocab, seed=0):
    """Random weights under the reference TransformerModel's names (encoder, cross-modal, with output)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    def linear(name, n_out, n_in):
        return {f"{name}.weight": r(n_out, n_in), f"{name}.bias": r(n_out, scale=0.1)}

    def norm(name, n):
        return {f"{name}.weight": 1 + r(n, scale=0.1), f"{name}.bias": r(n, scale=0.1)}

    s = {"position_embeddings.weight": r(NPOS, C), "cross_lang_embeddings.weight": r(NLANGS, C),
         "embeddings.weight": r(vocab, C)}
    s.update(norm("layer_norm_emb", C))
    s.update(linear("image_embeddings.image_embeddings", C, FEAT))
    s.update(linear("image_embeddings.image_distbution_embeddings", C, CLASSES))
    s.update(linear("image_embeddings.image_location_embeddings", C, 5))
    s.update(norm("image_embeddings.LayerNorm", C))
    s.update(norm("refine_embeddings.norm", C))
    s.update(linear("cross_alignment.align_output", C, C))
    for i in range(LAYERS):
        for lin in ("q_lin", "k_lin", "v_lin", "out_lin"):
            s.update(linear(f"attentions.{i}.{lin}", C, C))
            s.update(linear(f"encoder_attn.{i}.{lin}", C, C))
        s.update(norm(f"layer_norm1.{i}", C))
        s.update(norm(f"layer_norm15.{i}", C))
        s.update(linear(f"ffns.{i}.lin1", 4 * C, C))
        s.update(linear(f"ffns.{i}.lin2", C, 4 * C))
        s.update(norm(f"layer_norm2.{i}", C))
    s.update(linear("pooled_layer.dense", C, C))
    s.update(linear("seq_relationship", 1, C))
    s.update(linear("mrfr_dense", FEAT, C))
    s.update(linear("transformer_obj.dense", C, C))
    s.update(norm("transformer_obj.LayerNorm", C))
    s["pred_layer.proj.weight"] = s["embeddings.weight"]  # share_inout_emb
    s["pred_layer.proj.bias"] = r(vocab, scale=0.1)
    s.update(linear("pred_obj_layer.proj", CLASSES, C))
    return s


def save_release(path, state, with_params=True):
    ckpt = {"model": {"module." + k: v for k, v in state.items()}}
    if with_params:
        ckpt["params"] = {"n_heads": HEADS, "emb_dim": C, "gelu_activation": True, "dropout": 0.1,
                          "attention_dropout": 0.1, "lang2id": {"en": 0, "de": 1, "fr": 2}}
    torch.save(ckpt, str(path))


def reference_text_forward(s, tokens, pad=1):
    """The reference's text stream (crossfwd, stream 'text', no langs, eval): post-LN, eps 1e-12."""
    mask = tokens.ne(pad)
    bsz, T = tokens.shape
    x = s["embeddings.weight"][tokens] + s["position_embeddings.weight"][torch.arange(T)][None]
    x = F.layer_norm(x, (C,), s["layer_norm_emb.weight"], s["layer_norm_emb.bias"], eps=EPS)
    x = x * mask[..., None]
    dh = C // HEADS
    for i in range(LAYERS):
        def lin(name, h):
            return F.linear(h, s[f"attentions.{i}.{name}.weight"], s[f"attentions.{i}.{name}.bias"])

        q, k, v = (lin(n, x).view(bsz, T, HEADS, dh).transpose(1, 2) for n in ("q_lin", "k_lin", "v_lin"))
        scores = (q / math.sqrt(dh)) @ k.transpose(2, 3)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(bsz, T, C)
        x = F.layer_norm(x + lin("out_lin", ctx), (C,), s[f"layer_norm1.{i}.weight"], s[f"layer_norm1.{i}.bias"], eps=EPS)
        h = F.linear(F.gelu(F.linear(x, s[f"ffns.{i}.lin1.weight"], s[f"ffns.{i}.lin1.bias"])),
                     s[f"ffns.{i}.lin2.weight"], s[f"ffns.{i}.lin2.bias"])
        x = F.layer_norm(x + h, (C,), s[f"layer_norm2.{i}.weight"], s[f"layer_norm2.{i}.bias"], eps=EPS)
        x = x * mask[..., None]
    return x


def with_reference_eps(model):
    """A copy of ``model`` whose LayerNorms use the reference's epsilon, to test the mapping exactly."""
    model = copy.deepcopy(model)
    for mod in model.modules():
        if isinstance(mod, torch.nn.LayerNorm):
            mod.eps = EPS
    return model


@pytest.fixture(scope="module")
def imported(tmp_path_factory, spm_dir):
    base = tmp_path_factory.mktemp("m3p")
    state = release_state(_vocab(spm_dir))
    save_release(base / "model.pth", state)
    dims = import_m3p(str(base / "model.pth"), str(base / "out"), os.path.join(spm_dir, "sentencepiece.bpe.model"))
    return state, dims, M3PHub.from_pretrained(str(base / "out")), base


def test_text_stream_matches_the_reference(imported):
    state, dims, hub, _ = imported
    assert (dims.layers, dims.embed_dim, dims.heads, dims.region_feat_dim, dims.num_region_classes) == \
        (LAYERS, C, HEADS, FEAT, CLASSES)
    toks = [hub.encode(t) for t in TEXT[:3]]
    n = max(len(t) for t in toks)
    tokens = torch.full((3, n), 1, dtype=torch.long)
    for i, t in enumerate(toks):
        tokens[i, :len(t)] = t
    mask = tokens.ne(1)
    with torch.no_grad():
        ref = reference_text_forward(state, tokens)
        ours = hub.extract_features(tokens)
        # the mapping itself is exact: with the reference's epsilon in every LayerNorm the outputs agree
        exact = with_reference_eps(hub.model)(tokens, features_only=True)["features"]
    err_exact = (exact - ref)[mask].abs().max().item()
    err = (ours - ref)[mask].abs().max().item()
    print(f"M3P release text parity: max abs error {err_exact:.2e} (same LayerNorm eps), "
          f"{err:.2e} (fairseq's eps 1e-5 against the reference's 1e-12)")
    assert err_exact < 1e-4
    assert err < 2e-3
    # MLM logits: the bias maps; the transform before it does not exist in the reference (see docstring)
    enc = hub.model.encoder
    assert torch.equal(enc.lm_head.bias, state["pred_layer.proj.bias"])
    assert enc.lm_head.weight is enc.sentence_encoder.embed_tokens.weight


def test_region_and_head_mappings(imported):
    state, _, hub, _ = imported
    m = with_reference_eps(hub.model)
    enc = m.encoder
    g = torch.Generator().manual_seed(5)
    feats, boxes = torch.rand(2, 6, FEAT, generator=g), torch.rand(2, 6, 5, generator=g)
    with torch.no_grad():
        # reference image stream (no class distribution); its inputs are L2-normalized by its loader
        ref = F.layer_norm(
            F.linear(F.normalize(feats, dim=-1), state["image_embeddings.image_embeddings.weight"],
                     state["image_embeddings.image_embeddings.bias"])
            + F.linear(F.normalize(boxes, dim=-1), state["image_embeddings.image_location_embeddings.weight"],
                       state["image_embeddings.image_location_embeddings.bias"]),
            (C,), state["image_embeddings.LayerNorm.weight"], state["image_embeddings.LayerNorm.bias"], eps=EPS)
        assert (enc.region_embed(feats, boxes) - ref).abs().max() < 1e-4

        h = torch.randn(3, 5, C, generator=g)
        pooled = torch.tanh(F.linear(h[:, 0], state["pooled_layer.dense.weight"], state["pooled_layer.dense.bias"]))
        vlm_ref = F.linear(pooled, state["seq_relationship.weight"], state["seq_relationship.bias"])
        assert (m.classification_heads["vlm"](h) - vlm_ref).abs().max() < 1e-5

        t = F.layer_norm(F.gelu(F.linear(h, state["transformer_obj.dense.weight"], state["transformer_obj.dense.bias"])),
                         (C,), state["transformer_obj.LayerNorm.weight"], state["transformer_obj.LayerNorm.bias"], eps=EPS)
        obj_ref = F.linear(t, state["pred_obj_layer.proj.weight"], state["pred_obj_layer.proj.bias"])
        assert (enc.mrm_cls_head(h) - obj_ref).abs().max() < 1e-4
    # joint input runs end to end with the imported region stream
    tokens = hub.encode("a dog")
    assert hub.extract_features(tokens, regions=feats[0], boxes=boxes[0]).shape == (1, len(tokens) + 6, C)


def test_image_first_layout_keeps_the_joint_position_rows(imported, spm_dir):
    state, _, _, base = imported
    out = base / "out_joint"
    dims = import_m3p(str(base / "model.pth"), str(out), os.path.join(spm_dir, "sentencepiece.bpe.model"),
                      layout="image-first", image_regions=36)
    assert dims.max_positions == NPOS - 36
    hub = M3PHub.from_pretrained(str(out))
    table = hub.model.encoder.sentence_encoder.embed_positions.weight
    # fairseq numbers the i-th token pad + 1 + i; the reference's jointfwd gives it row 36 + i
    assert torch.equal(table[2:], state["position_embeddings.weight"][36:])


def test_bad_release_files_give_one_line(tmp_path, spm_dir):
    spm = os.path.join(spm_dir, "sentencepiece.bpe.model")
    torch.save({"model": {"encoder.sentence_encoder.embed_tokens.weight": torch.zeros(3, 2)}}, str(tmp_path / "x.pt"))
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "x.pt"), str(tmp_path / "out"), "--spm", spm])
    assert "not an M3P/XLM-style checkpoint" in str(e.value) and "\n" not in str(e.value)

    save_release(tmp_path / "noparams.pth", release_state(_vocab(spm_dir)), with_params=False)
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "noparams.pth"), str(tmp_path / "out"), "--spm", spm])
    assert "give --heads" in str(e.value)
    main([str(tmp_path / "noparams.pth"), str(tmp_path / "out"), "--spm", spm, "--heads", str(HEADS)])
    assert sorted(os.listdir(tmp_path / "out")) == ["dict.txt", "model.pt", "sentencepiece.bpe.model"]

    save_release(tmp_path / "vocab.pth", release_state(_vocab(spm_dir) + 5))
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "vocab.pth"), str(tmp_path / "out2"), "--spm", spm])
    assert "token embeddings" in str(e.value) and not (tmp_path / "out2").exists()
