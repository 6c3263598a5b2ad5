"""The official M3P release, imported, computes the reference code's function.

The reference (microsoft/M3P, src/model/transformer.py) is written out below from its equations in
plain torch, so the test needs no code from that repository:

* ``ref_text``: ``crossfwd`` on the text stream with ``langs`` (token + position from row 0 +
  language embedding, LayerNorm, then the layers);
* ``ref_joint``: ``jointfwd`` (R regions through the image embedding and its LayerNorm, then the
  text's token embeddings; positions 0 .. R + T - 1 over both; the mask applied, then the
  embedding LayerNorm; the layers);
* the layers: post-LN self-attention and GELU feed-forward, LayerNorm epsilon 1e-12, outputs
  zeroed at padding;
* ``predict``: ``is_relation`` (tanh pooler on position 0 + ``seq_relationship``), the masked-LM
  ``pred_layer`` (hidden x embeddings + bias), ``is_mrfr`` (``mrfr_dense``), ``is_obj``
  (``transformer_obj`` + ``pred_obj_layer``).

Region features and boxes enter the reference model L2-normalized by its data loader
(``F.normalize`` of the feature, ``norm_boxes`` of the 5-d vector); the plugin normalizes inside
its region embedding, so both get the same raw arrays here. Random weights everywhere, LayerNorm
weights perturbed away from 1/0, non-trivial language ids, regions 10 and 100.
"""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m3p_fairseq import M3PHub
from m3p_fairseq.errors import M3PInputError
from m3p_fairseq.data.region_store import RegionStore, spatial_features
from preprocess import build_spm
from preprocess.import_m3p import UNUSED, import_m3p, main

from .conftest import run

EPS = 1e-12  # the reference's LayerNorm epsilon (fairseq uses 1e-5)
LANGS = ["en", "de", "fr"]
TEXT = ["a dog runs on the grass", "ein Hund läuft über die Wiese", "un chien court sur l'herbe",
        "two children play with a red ball", "zwei Kinder spielen mit einem Ball"]
TINY = dict(C=32, LAYERS=2, HEADS=4, FEAT=24, CLASSES=7, NPOS=514)
TINY_FLAGS = ["--encoder-layers", "2", "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "128",
              "--encoder-attention-heads", "4", "--max-positions", "514"]  # the tiny release's sizes
BASE = dict(C=768, LAYERS=12, HEADS=12, FEAT=2048, CLASSES=1600, NPOS=514)


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("spm")
    raw = base / "raw.txt"
    raw.write_text("\n".join(TEXT * 4) + "\n", encoding="utf-8")
    build_spm.train([str(raw)], str(base / "spm"), vocab_size=80)
    return str(base / "spm")


def _vocab(folder):
    with open(os.path.join(folder, "dict.txt"), encoding="utf-8") as f:
        return 4 + sum(1 for _ in f) + 1


def release_state(vocab, C, LAYERS, FEAT, CLASSES, NPOS, seed=0, **unused):
    """Random weights under the reference TransformerModel's names (encoder, cross-modal, with output)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    def linear(name, n_out, n_in):
        return {f"{name}.weight": r(n_out, n_in, scale=1.5 / math.sqrt(n_in)), f"{name}.bias": r(n_out, scale=0.1)}

    def norm(name, n):
        return {f"{name}.weight": 1 + r(n, scale=0.1), f"{name}.bias": r(n, scale=0.1)}

    s = {"position_embeddings.weight": r(NPOS, C), "cross_lang_embeddings.weight": r(len(LANGS), C),
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
    for head in ("pooled_layer", "pooled_layer2"):
        s.update(linear(f"{head}.dense", C, C))
    s.update(linear("seq_relationship", 1, C))
    s.update(linear("seq_relationship2", 1, C))
    for i in range(2):
        s.update(linear(f"latent_transforms.{i}.x_to_mu", C, C))
        s.update(linear(f"original_transforms.{i}.dense", C, C))
    s.update(linear("mrfr_dense", FEAT, C))
    s.update(linear("transformer_obj.dense", C, C))
    s.update(norm("transformer_obj.LayerNorm", C))
    s["pred_layer.proj.weight"] = s["embeddings.weight"]  # share_inout_emb
    s["pred_layer.proj.bias"] = r(vocab, scale=0.1)
    s.update(linear("pred_obj_layer.proj", CLASSES, C))
    return s


def save_release(path, state, heads, with_params=True):
    """The container the reference trainer saves: model (module.-prefixed), params, optimizer state."""
    ckpt = {"epoch": 3, "n_total_iter": 1000, "best_metrics": {}, "best_stopping_criterion": -1e12,
            "model": {"module." + k: v for k, v in state.items()},
            "model_optimizer": {"state": {0: {"step": 10, "exp_avg": torch.zeros(3)}},
                                "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.98), "params": [0]}]}}
    if with_params:
        ckpt["params"] = {"n_heads": heads, "emb_dim": state["embeddings.weight"].shape[1], "gelu_activation": True,
                          "dropout": 0.1, "attention_dropout": 0.1, "refine_image": False, "n_langs": len(LANGS),
                          "lang2id": {l: i for i, l in enumerate(LANGS)}, "id2lang": dict(enumerate(LANGS)),
                          "langs": list(LANGS), "max_region_num": 100}
    torch.save(ckpt, str(path))


# ---- the reference, from its equations ---------------------------------------------------------------
def _ln(x, s, name):
    return F.layer_norm(x, (x.size(-1),), s[f"{name}.weight"], s[f"{name}.bias"], eps=EPS)


def _lin(x, s, name):
    return F.linear(x, s[f"{name}.weight"], s[f"{name}.bias"])


def ref_layers(s, x, mask, heads):
    bsz, T, C = x.shape
    dh = C // heads
    n_layers = 1 + max(int(k.split(".")[1]) for k in s if k.startswith("attentions."))
    for i in range(n_layers):
        q, k, v = (_lin(x, s, f"attentions.{i}.{n}").view(bsz, T, heads, dh).transpose(1, 2)
                   for n in ("q_lin", "k_lin", "v_lin"))
        scores = (q / math.sqrt(dh)) @ k.transpose(2, 3)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        ctx = (scores.float().softmax(-1) @ v).transpose(1, 2).reshape(bsz, T, C)
        x = _ln(x + _lin(ctx, s, f"attentions.{i}.out_lin"), s, f"layer_norm1.{i}")
        h = _lin(0.5 * (y := _lin(x, s, f"ffns.{i}.lin1")) * (1.0 + torch.erf(y / math.sqrt(2.0))), s, f"ffns.{i}.lin2")
        x = _ln(x + h, s, f"layer_norm2.{i}")
        x = x * mask[..., None]
    return x


def ref_text(s, tokens, langs, heads, pad=1):
    """crossfwd, text stream, with per-token language ids (B x T)."""
    mask = tokens.ne(pad)
    x = s["embeddings.weight"][tokens] + s["position_embeddings.weight"][torch.arange(tokens.size(1))][None]
    x = x + s["cross_lang_embeddings.weight"][langs]
    x = _ln(x, s, "layer_norm_emb") * mask[..., None]
    return ref_layers(s, x, mask, heads)


def ref_joint(s, tokens, feats, boxes, heads, pad=1):
    """jointfwd: every image has all R regions (the reference's lengths_img = max_region_num)."""
    R = feats.size(1)
    img = _ln(_lin(F.normalize(feats, dim=-1), s, "image_embeddings.image_embeddings")
              + _lin(F.normalize(boxes, dim=-1), s, "image_embeddings.image_location_embeddings"),
              s, "image_embeddings.LayerNorm")
    x = torch.cat([img, s["embeddings.weight"][tokens]], dim=1)
    x = x + s["position_embeddings.weight"][torch.arange(x.size(1))][None]
    mask = torch.cat([torch.ones(tokens.size(0), R, dtype=torch.bool), tokens.ne(pad)], dim=1)
    x = _ln(x * mask[..., None], s, "layer_norm_emb")
    return ref_layers(s, x, mask, heads)


def ref_relation(s, h):
    return _lin(torch.tanh(_lin(h[:, 0], s, "pooled_layer.dense")), s, "seq_relationship").squeeze(-1)


def ref_mlm(s, h):
    return F.linear(h, s["pred_layer.proj.weight"], s["pred_layer.proj.bias"])


def ref_mrfr(s, h):
    return _lin(h, s, "mrfr_dense")


def ref_obj(s, h):
    t = _lin(h, s, "transformer_obj.dense")
    t = _ln(0.5 * t * (1.0 + torch.erf(t / math.sqrt(2.0))), s, "transformer_obj.LayerNorm")
    return _lin(t, s, "pred_obj_layer.proj")


# ---- plugin vs reference ---------------------------------------------------------------------------
def batch_of_text(hub, texts):
    toks = [hub.encode(t) for t in texts]
    tokens = torch.full((len(toks), max(len(t) for t in toks)), 1, dtype=torch.long)
    for i, t in enumerate(toks):
        tokens[i, :len(t)] = t
    return tokens


def compare_every_output(hub, state, heads, feat, num_regions, seed):
    """Max abs difference of each output (text states, joint states, match score, MLM logits, MRM heads)."""
    model = hub.model.eval()
    g = torch.Generator().manual_seed(seed)
    tokens = batch_of_text(hub, TEXT[:3])
    mask = tokens.ne(1)
    lang_ids = torch.tensor([0, 1, 2])  # each sentence its own language (and the table's rows differ)
    bsz = tokens.size(0)
    feats = torch.rand(bsz, num_regions, feat, generator=g) * 3
    xy = torch.rand(bsz, num_regions, 2, generator=g) * 0.5
    boxes = torch.from_numpy(np.stack([spatial_features(torch.cat([xy[i], xy[i] + 0.4], -1).numpy() * 100,
                                                        100.0, 100.0) for i in range(bsz)]))
    masked = torch.zeros_like(mask)
    masked[:, 1] = True
    masked_regions = torch.zeros(bsz, num_regions, dtype=torch.bool)
    masked_regions[:, ::3] = True
    err = {}
    with torch.no_grad():
        ours = model(tokens, src_lang=lang_ids, features_only=True)["features"]
        ref = ref_text(state, tokens, lang_ids[:, None].expand_as(tokens), heads)
        err["text states"] = (ours - ref)[mask].abs().max().item()
        out = model(tokens, src_lang=lang_ids, masked_tokens=masked)
        err["xMLM logits"] = (out["lm_logits"] - ref_mlm(state, ref[masked])).abs().max().item()

        out = model(tokens, regions=feats, region_boxes=boxes, masked_tokens=masked, masked_regions=masked_regions,
                    vlm=True)
        ref = ref_joint(state, tokens, feats, boxes, heads)
        joint_mask = torch.cat([torch.ones(bsz, num_regions, dtype=torch.bool), mask], 1)
        err["joint states"] = (out["features"] - ref)[joint_mask].abs().max().item()
        err["match score"] = (out["vlm_logits"] - ref_relation(state, ref)).abs().max().item()
        ref_text_part, ref_img = ref[:, num_regions:], ref[:, :num_regions]
        err["MMLM logits"] = (out["lm_logits"] - ref_mlm(state, ref_text_part[masked])).abs().max().item()
        err["MRM regression"] = (out["mrm_feat"] - ref_mrfr(state, ref_img[masked_regions])).abs().max().item()
        err["MRM classes"] = (out["mrm_cls"] - ref_obj(state, ref_img[masked_regions])).abs().max().item()
        # the hub's own entry points
        hub_text = hub.extract_features(tokens, lang="de")
        err["hub text"] = (hub_text - ref_text(state, tokens, torch.ones_like(tokens), heads))[mask].abs().max().item()
        p = hub.score(feats[0].numpy(), TEXT[0], boxes=boxes[0].numpy())
        one = batch_of_text(hub, TEXT[:1])
        err["hub score"] = abs(p - torch.sigmoid(ref_relation(state, ref_joint(state, one, feats[:1], boxes[:1],
                                                                                    heads))).item())
    return err


@pytest.fixture(scope="module")
def tiny_import(tmp_path_factory, spm_dir):
    base = tmp_path_factory.mktemp("m3p")
    state = release_state(_vocab(spm_dir), **TINY)
    save_release(base / "checkpoint.pth", state, TINY["HEADS"])
    main([str(base / "checkpoint.pth"), str(base / "out"), "--spm", os.path.join(spm_dir, "sentencepiece.bpe.model")])
    return state, base


@pytest.mark.parametrize("num_regions", [10, 100])
def test_tiny_release_computes_the_reference_function(tiny_import, num_regions):
    state, base = tiny_import
    hub = M3PHub.from_pretrained(str(base / "out"))
    assert hub.model.args.arch == "m3p_reference_base" and hub.model.langs == LANGS
    err = compare_every_output(hub, state, TINY["HEADS"], TINY["FEAT"], num_regions, seed=num_regions)
    print(f"tiny release, {num_regions} regions: " + ", ".join(f"{k} {v:.1e}" for k, v in err.items()))
    assert max(err.values()) < 1e-4, err


def test_base_size_release_computes_the_reference_function(tmp_path, spm_dir):
    """12 x 768, 12 heads, 2048-d regions, 1,600 classes, regions 10 and 100."""
    state = release_state(_vocab(spm_dir), **BASE, seed=1)
    save_release(tmp_path / "checkpoint.pth", state, BASE["HEADS"])
    import_m3p(str(tmp_path / "checkpoint.pth"), str(tmp_path / "out"), os.path.join(spm_dir, "sentencepiece.bpe.model"))
    hub = M3PHub.from_pretrained(str(tmp_path / "out"))
    for num_regions in (10, 100):
        err = compare_every_output(hub, state, BASE["HEADS"], BASE["FEAT"], num_regions, seed=num_regions)
        print(f"12 x 768 release, {num_regions} regions: " + ", ".join(f"{k} {v:.1e}" for k, v in err.items()))
        assert max(err.values()) < 1e-4, err


def test_unused_modules_are_named_in_one_warning(tiny_import, spm_dir, caplog):
    state, base = tiny_import
    with caplog.at_level("WARNING"):
        import_m3p(str(base / "checkpoint.pth"), str(base / "again"), os.path.join(spm_dir, "sentencepiece.bpe.model"))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    left_out = [w for w in warnings if "left out" in w]
    assert len(left_out) == 1, warnings
    for name in ("encoder_attn", "layer_norm15", "refine_embeddings", "cross_alignment", "pooled_layer2",
                 "seq_relationship2", "latent_transforms", "original_transforms",
                 "image_embeddings.image_distbution_embeddings"):
        assert name + " (" in left_out[0], name
    assert not any("not in the reference layout" in w for w in warnings)
    # nothing the retrieval or pre-training path uses is among them
    for used in ("mrfr_dense", "cross_lang_embeddings", "pooled_layer.", "seq_relationship.", "transformer_obj"):
        assert not any(u.startswith(used) for u in UNUSED)


def test_bad_release_files_give_one_line(tmp_path, spm_dir):
    spm = os.path.join(spm_dir, "sentencepiece.bpe.model")
    torch.save({"model": {"encoder.sentence_encoder.embed_tokens.weight": torch.zeros(3, 2)}}, str(tmp_path / "x.pt"))
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "x.pt"), str(tmp_path / "out"), "--spm", spm])
    assert "not an M3P/XLM-style checkpoint" in str(e.value) and "\n" not in str(e.value)

    state = release_state(_vocab(spm_dir), **TINY)
    save_release(tmp_path / "noparams.pth", state, TINY["HEADS"], with_params=False)
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "noparams.pth"), str(tmp_path / "out"), "--spm", spm])
    assert "give --heads" in str(e.value)
    with pytest.raises(SystemExit) as e:  # no lang2id to name the language rows
        main([str(tmp_path / "noparams.pth"), str(tmp_path / "out"), "--spm", spm, "--heads", "4"])
    assert "give --langs" in str(e.value) and not (tmp_path / "out").exists()
    main([str(tmp_path / "noparams.pth"), str(tmp_path / "out"), "--spm", spm, "--heads", "4", "--langs", "en,de,fr"])
    assert sorted(os.listdir(tmp_path / "out")) == ["dict.txt", "model.pt", "sentencepiece.bpe.model"]

    save_release(tmp_path / "vocab.pth", release_state(_vocab(spm_dir) + 5, **TINY), TINY["HEADS"])
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "vocab.pth"), str(tmp_path / "out2"), "--spm", spm])
    assert "token embeddings" in str(e.value) and not (tmp_path / "out2").exists()


# ---- every load path, on the tests' world ------------------------------------------------------------
@pytest.fixture(scope="module")
def world_release(tiny_world, tmp_path_factory):
    """A release-format file whose vocabulary and region sizes are the tiny world's, imported by the CLI."""
    data = tiny_world["data"]
    store = RegionStore(os.path.join(data, "regions", "test.json"))
    dims = dict(TINY, FEAT=store.feat_dim, CLASSES=store.num_classes)
    base = tmp_path_factory.mktemp("world_release")
    state = release_state(_vocab(data), **dims, seed=7)
    save_release(base / "checkpoint.pth", state, TINY["HEADS"])
    run([os.path.join(os.path.dirname(__import__("sys").executable), "m3p-import-m3p"), str(base / "checkpoint.pth"),
         str(base / "out"), "--spm", os.path.join(data, "sentencepiece.bpe.model")])
    return state, base, data


def reference_retrieval(state, data, lang="en", split="test"):
    """The reference evaluator's (image x caption) match matrix and its R@K (xevaluator.py's top-10 loops)."""
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(os.path.join(data, "dict.txt"))
    d.add_symbol("<mask>")
    caps = data_utils.load_indexed_dataset(os.path.join(data, "captions", lang, split), d)
    with open(os.path.join(data, "captions", lang, split + ".ids"), encoding="utf-8") as f:
        ids = [line.strip() for line in f]
    store = RegionStore(os.path.join(data, "regions", f"{split}.json"))
    images, caption_image = np.unique(store.indices_of(ids), return_inverse=True)  # the command's image order
    scores = np.zeros((len(images), len(ids)))
    with torch.no_grad():
        for i, row in enumerate(images):
            item = store.get(int(row))
            feats = torch.from_numpy(item["features"].astype(np.float32))[None]
            boxes = torch.from_numpy(spatial_features(item["boxes"], item["width"], item["height"]))[None]
            for j in range(len(ids)):
                tokens = torch.cat([torch.tensor([0]), caps[j]])[None]
                scores[i, j] = ref_relation(state, ref_joint(state, tokens, feats, boxes, TINY["HEADS"])).item()
    # the evaluator: i2t over each image's top 10 captions, t2i over each caption's top 10 images
    r = {}
    for name, mat, positive in (("i2t", scores, lambda a, b: caption_image[b] == a),
                                ("t2i", scores.T, lambda a, b: caption_image[a] == b)):
        top = np.argsort(-mat, axis=1, kind="stable")[:, :10]
        first = [next((k for k, b in enumerate(row) if positive(a, b)), 99) for a, row in enumerate(top)]
        for k in (1, 5, 10):
            r[f"{name}_r{k}"] = 100.0 * np.mean(np.array(first) < k)
    r["mR"] = np.mean([r[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)])
    return scores, r


def test_zero_shot_retrieval_ranks_as_the_reference_evaluator(world_release, tmp_path):
    state, base, data = world_release
    ref_scores, ref_recall = reference_retrieval(state, data)
    ckpt = str(base / "out" / "model.pt")
    cli = os.path.join(os.path.dirname(__import__("sys").executable), "m3p-retrieval-eval")
    for k in (0, 1):
        run([cli, data, "--path", ckpt, "--langs", "en", "--num-shards", "2", "--shard-id", str(k),
             "--scores-out", str(tmp_path / f"s{k}.npz"), "--batch-size", "37"])
    parts = [np.load(tmp_path / f"s{k}.npz") for k in (0, 1)]
    ids = np.concatenate([p["en_ids"] for p in parts])
    ours = np.empty(ref_scores.size)
    ours[ids] = np.concatenate([p["en_scores"] for p in parts])
    ours = ours.reshape(ref_scores.shape)
    assert np.abs(ours - ref_scores).max() < 1e-4
    assert (np.argsort(-ours, axis=1, kind="stable") == np.argsort(-ref_scores, axis=1, kind="stable")).all()
    run([cli, data, "--path", ckpt, "--langs", "en", "--merge", str(tmp_path / "s0.npz"), str(tmp_path / "s1.npz"),
         "--results", str(tmp_path / "r.json"), "--key", "retrieval.release"])
    got = json.load(open(tmp_path / "r.json"))["retrieval"]["release"]["en"]
    for key, value in ref_recall.items():
        assert got[key] == pytest.approx(value), key


def test_fine_tuning_paths_start_from_the_reference_function(world_release, tmp_path):
    """--pretrained-checkpoint (retrieval fine-tuning) and fairseq-train --restore-file keep the function."""
    state, base, data = world_release
    ckpt = str(base / "out" / "model.pt")
    from fairseq import options, tasks

    def build(arch):
        args = options.parse_args_and_arch(options.get_training_parser(), [
            data, "--task", "m3p_retrieval", "--arch", arch, "--criterion", "m3p_retrieval",
            "--pretrained-checkpoint", ckpt, "--cpu"] + TINY_FLAGS)
        return tasks.setup_task(args).build_model(args).eval()

    with pytest.raises(M3PInputError, match="--joint-layout text-first differs .* --arch m3p_reference_base model"):
        build("m3p_base")
    model = build("m3p_reference_base")  # the release's --langs come from the checkpoint
    hub = M3PHub.from_pretrained(str(base / "out"))
    tokens = batch_of_text(hub, ["a red dog", "ein Hund"])
    g = torch.Generator().manual_seed(3)
    feats, boxes = torch.rand(2, 10, state["mrfr_dense.weight"].shape[0], generator=g), torch.rand(2, 10, 5, generator=g)
    with torch.no_grad():
        ref = ref_relation(state, ref_joint(state, tokens, feats, boxes, TINY["HEADS"]))
        assert (model(tokens, regions=feats, region_boxes=boxes, vlm=True)["vlm_logits"] - ref).abs().max() < 1e-4

    # continued pre-training from the release: the flags the import printed; lr ~0 keeps the weights
    save = tmp_path / "ckpt"
    run(["fairseq-train", data, "--user-dir", "m3p_fairseq", "--task", "multitask_multimodal", "--arch",
         "m3p_reference_base", "--langs", ",".join(LANGS), "--criterion", "m3p_pretrain",
         "--objectives", "mmlm,vlm", "--restore-file", ckpt, "--reset-optimizer", "--reset-dataloader",
         "--optimizer", "adam", "--lr", "1e-12", "--max-update", "1", "--batch-size", "8", "--cpu",
         "--num-workers", "0", "--save-dir", str(save), "--no-epoch-checkpoints", "--disable-validation"] + TINY_FLAGS)
    restored = M3PHub.from_pretrained(str(save), checkpoint_file="checkpoint_last.pt",
                                      data_name_or_path=data).model.eval()
    with torch.no_grad():
        assert (restored(tokens, regions=feats, region_boxes=boxes, vlm=True)["vlm_logits"] - ref).abs().max() < 1e-4

    # the same command with the plain architecture says which options the checkpoint needs
    res = run(["fairseq-train", data, "--user-dir", "m3p_fairseq", "--task", "multitask_multimodal", "--arch",
               "m3p_base", "--criterion", "m3p_pretrain", "--restore-file", ckpt, "--reset-optimizer",
               "--max-update", "1", "--batch-size", "8", "--cpu", "--save-dir", str(tmp_path / "bad")] + TINY_FLAGS,
              check=False)
    assert res.returncode != 0
    err = res.stderr.strip().splitlines()[-1]
    assert "--lm-head linear" in err and "m3p_reference_base" in err, res.stderr[-2000:]
