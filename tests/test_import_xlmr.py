"""XLM-R import: HF and fairseq sources reproduce their hidden states through M3PHub; bad input is one line.

Every source model is tiny and random, built here in its real on-disk format: HF's
``save_pretrained`` (pytorch_model.bin or model.safetensors) and a fairseq checkpoint with argparse
args and ``decoder.*`` keys, as xlmr.base is released. transformers is a test-only dependency.

XLM-R large's shape is imported and trained too (``test_large_import_parity_and_training``), at
M3P_LARGE_LAYERS layers (default 2, for the suite's time; 24 is the release's depth).
"""
import json
import math
import os
import shutil

import pytest
import torch

from .conftest import padded_text_batch, run
from m3p_fairseq import M3PHub
from preprocess import build_spm
from preprocess.import_xlmr import import_xlmr, main

TEXT = ["a dog runs on the grass", "ein Hund läuft über die Wiese", "un chien court sur l'herbe",
        "pes běží po trávě", "two children play with a red ball", "zwei Kinder spielen mit einem Ball",
        "a man rides a bike down the street", "une femme lit un livre au parc"]
SENTENCES = ["a dog plays with the ball", "zwei Kinder laufen", "une femme court"]
HIDDEN, LAYERS, HEADS, FFN, MAX_POS = 32, 2, 4, 48, 40


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    """A tiny sentencepiece model + dict.txt (build_spm's layout: <s>=0 <pad>=1 </s>=2 <unk>=3)."""
    base = tmp_path_factory.mktemp("spm")
    raw = base / "raw.txt"
    raw.write_text("\n".join(TEXT * 4) + "\n", encoding="utf-8")
    build_spm.train([str(raw)], str(base / "spm"), vocab_size=90)
    return str(base / "spm")


def _vocab(spm_dir):
    with open(os.path.join(spm_dir, "dict.txt"), encoding="utf-8") as f:
        return 4 + sum(1 for _ in f) + 1  # specials, pieces, <mask>


def _randomize(model, seed, scale=0.3):
    """Random values everywhere (LayerNorms too), so a swapped or missed weight shows in the outputs.
    ``scale``: of the matrices (0.02, XLM-R's initialization, keeps a deep and wide model's activations
    in range, where larger weights saturate its softmaxes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (scale if p.dim() > 1 else 0.1))
            if "LayerNorm.weight" in name or "layer_norm.weight" in name or "layernorm" in name.lower() and name.endswith("weight"):
                p.add_(1.0)


def _batch(hub):
    toks = [hub.encode(s) for s in SENTENCES]
    n = max(len(t) for t in toks)
    batch = torch.full((len(toks), n), hub.dictionary.pad(), dtype=torch.long)
    for i, t in enumerate(toks):
        batch[i, :len(t)] = t
    return batch


def _save_hf(model, folder, safetensors):
    """save_pretrained; pytorch_model.bin as transformers < 5 wrote it (torch.save of the state dict)."""
    model.save_pretrained(str(folder))
    if not safetensors:
        os.remove(os.path.join(folder, "model.safetensors"))
        torch.save(model.state_dict(), os.path.join(folder, "pytorch_model.bin"))


def _hf_model(spm_dir, masked_lm, seed=0):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.XLMRobertaConfig(
        vocab_size=_vocab(spm_dir), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=MAX_POS + 2, type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    cls = transformers.XLMRobertaForMaskedLM if masked_lm else transformers.XLMRobertaModel
    model = cls(cfg)
    _randomize(model, seed)
    if masked_lm:
        model.tie_weights()
    return model.eval()


@pytest.mark.parametrize("masked_lm,safetensors", [(True, False), (False, True)])
def test_hf_parity(tmp_path, spm_dir, masked_lm, safetensors):
    if safetensors:
        pytest.importorskip("safetensors")
    hf = _hf_model(spm_dir, masked_lm)
    src = tmp_path / "hf"
    _save_hf(hf, src, safetensors)
    shutil.copy(os.path.join(spm_dir, "sentencepiece.bpe.model"), src)
    assert (src / ("model.safetensors" if safetensors else "pytorch_model.bin")).exists()

    out = tmp_path / "out"
    dims = import_xlmr(str(src), str(out), region_feat_dim=24, num_region_classes=7)
    assert (dims.layers, dims.embed_dim, dims.heads, dims.max_positions) == (LAYERS, HIDDEN, HEADS, MAX_POS)
    assert sorted(os.listdir(out)) == ["dict.txt", "model.pt", "sentencepiece.bpe.model"]
    with open(out / "dict.txt", encoding="utf-8") as f1, open(os.path.join(spm_dir, "dict.txt"), encoding="utf-8") as f2:
        assert f1.read() == f2.read()  # same file build_spm writes for this model

    hub = M3PHub.from_pretrained(str(out))
    tokens = _batch(hub)
    mask = tokens.ne(1)
    with torch.no_grad():
        ours = hub.extract_features(tokens)
        base = hf.roberta if masked_lm else hf
        ref = base(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
    assert ours.shape == ref.shape == (3, tokens.size(1), HIDDEN)
    err = (ours - ref)[mask].abs().max().item()
    print(f"HF parity ({'masked_lm' if masked_lm else 'base'}, {'safetensors' if safetensors else 'bin'}): "
          f"max abs error {err:.2e}")
    assert err < 1e-4
    if masked_lm:  # the MLM head maps too: same logits on real positions
        with torch.no_grad():
            logits = hub.model(tokens, masked_tokens=mask)["lm_logits"]
            ref_logits = hf(input_ids=tokens, attention_mask=mask.long()).logits[mask]
        assert (logits - ref_logits).abs().max().item() < 1e-4


def test_generation_mode_encoder_parity_and_ties(tmp_path, spm_dir):
    """--generation: the encoder of the generation model reproduces HF's states; the decoder shares its layers."""
    seq2seq = pytest.importorskip("m3p_fairseq.models.m3p_seq2seq")
    from fairseq import checkpoint_utils

    hf = _hf_model(spm_dir, masked_lm=True, seed=3)
    _save_hf(hf, tmp_path / "hf", safetensors=False)
    shutil.copy(os.path.join(spm_dir, "sentencepiece.bpe.model"), tmp_path / "hf")
    out = tmp_path / "gen"
    main([str(tmp_path / "hf"), str(out), "--generation", "--langs", "en,de"])
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(out / "model.pt")],
                                                                    arg_overrides={"data": str(out)})
    model = models[0].eval()
    assert isinstance(model, seq2seq.M3PSeq2SeqModel) and model.langs == ["en", "de"]
    seq2seq.assert_ties(model.encoder.sentence_encoder, model.decoder)
    tokens, mask = padded_text_batch(task.source_dictionary)
    with torch.no_grad():
        out_enc = model.encoder(tokens, src_lang=torch.zeros(3, dtype=torch.long))["encoder_out"][0].transpose(0, 1)
        ref = hf.roberta(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
    err = (out_enc - ref)[mask].abs().max().item()
    print(f"generation-mode encoder parity: max abs error {err:.2e}")
    assert err < 1e-4
    # the new parameters (cross-attention) come from fairseq's --seed: the same conversion writes the same
    # model, and the caller's random state is left as it was
    state = torch.random.get_rng_state()
    main([str(tmp_path / "hf"), str(tmp_path / "gen2"), "--generation", "--langs", "en,de"])
    assert torch.equal(torch.random.get_rng_state(), state)
    first, second = (torch.load(str(d / "model.pt"), weights_only=False)["model"] for d in (out, tmp_path / "gen2"))
    assert first.keys() == second.keys() and any("encoder_attn" in k for k in first)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_hub_encode_decode_round_trip(tmp_path, spm_dir):
    hf = _hf_model(spm_dir, masked_lm=False)
    _save_hf(hf, tmp_path / "hf", safetensors=False)
    shutil.copy(os.path.join(spm_dir, "sentencepiece.bpe.model"), tmp_path / "hf")
    import_xlmr(str(tmp_path / "hf"), str(tmp_path / "out"))
    hub = M3PHub.from_pretrained(str(tmp_path / "out" / "model.pt"))
    t = hub.encode("ein Hund läuft", lang="de")
    assert t[0] == 0 and t[-1] == 2 and (t[1:-1] > 3).all()
    assert hub.decode(t) == "ein Hund läuft"
    assert hub.decode(torch.stack([t, t])) == ["ein Hund läuft"] * 2
    # regions: the joint sequence comes back text first, then regions (2048-d default store)
    feats = hub.extract_features(t, regions=torch.rand(5, 2048), boxes=torch.rand(5, 5))
    assert feats.shape == (1, len(t) + 5, HIDDEN)


def _fairseq_xlmr(tmp_path, spm_dir, seed=1):
    """A fairseq RoBERTa built by fairseq, saved as xlmr.base is: args Namespace, decoder.* keys."""
    from fairseq import options, tasks

    src = tmp_path / "xlmr"
    src.mkdir()
    for name in ("dict.txt", "sentencepiece.bpe.model"):
        shutil.copy(os.path.join(spm_dir, name), src)
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(src), "--task", "masked_lm", "--arch", "roberta_base", "--criterion", "masked_lm",
        "--encoder-layers", str(LAYERS), "--encoder-embed-dim", str(HIDDEN), "--encoder-ffn-embed-dim", str(FFN),
        "--encoder-attention-heads", str(HEADS), "--max-positions", str(MAX_POS), "--tokens-per-sample", str(MAX_POS),
        "--dropout", "0", "--attention-dropout", "0"])
    task = tasks.setup_task(args)
    torch.manual_seed(seed)
    model = task.build_model(args)
    _randomize(model, seed)
    state = {("decoder" + k[len("encoder"):] if k.startswith("encoder.") else k): v
             for k, v in model.state_dict().items()}
    torch.save({"args": args, "model": state,
                "optimizer_history": [{"criterion_name": "MaskedLmLoss", "optimizer_name": "FairseqAdam",
                                       "lr_scheduler_state": {"best": None}, "num_updates": 0}],
                "extra_state": {"train_iterator": {"epoch": 1}}, "last_optimizer_state": None},
               str(src / "model.pt"))
    return src


def test_fairseq_parity(tmp_path, spm_dir):
    from fairseq.models.roberta import XLMRModel

    src = _fairseq_xlmr(tmp_path, spm_dir)
    # the reference is fairseq's own XLM-R hub reading the fixture, as a user would read xlmr.base
    ref = XLMRModel.from_pretrained(str(src), checkpoint_file="model.pt", bpe="sentencepiece").eval()
    import_xlmr(str(src), str(tmp_path / "out"))
    hub = M3PHub.from_pretrained(str(tmp_path / "out"))
    for s in SENTENCES:
        assert torch.equal(hub.encode(s), ref.encode(s))  # same pieces, same ids
    tokens = _batch(hub)
    mask = tokens.ne(1)
    with torch.no_grad():
        ours = hub.extract_features(tokens)
        theirs = ref.extract_features(tokens)
        err = (ours - theirs)[mask].abs().max().item()
        lm = hub.model(tokens, masked_tokens=mask)["lm_logits"]
        lm_ref = ref.model(tokens)[0][mask]
    print(f"fairseq parity: max abs error {err:.2e}")
    assert err < 1e-4
    assert (lm - lm_ref).abs().max().item() < 1e-4


def test_restore_file_trains_one_update(tmp_path, spm_dir):
    """fairseq-train --restore-file reads the imported checkpoint (the way fine-tuning starts)."""
    from preprocess.binarize import binarize

    src = _fairseq_xlmr(tmp_path, spm_dir)
    out = tmp_path / "out"
    import_xlmr(str(src), str(out))
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(out / "dict.txt", data)
    raw = tmp_path / "train.txt"
    raw.write_text("\n".join(TEXT) + "\n", encoding="utf-8")
    binarize(str(out / "sentencepiece.bpe.model"), str(out / "dict.txt"), str(data / "text" / "en"),
             {"train": str(raw)})
    res = run(["fairseq-train", str(data), "--user-dir", "m3p_fairseq", "--task", "multitask_multimodal",
               "--objectives", "xmlm", "--arch", "m3p_base", "--criterion", "m3p_pretrain",
               "--encoder-layers", str(LAYERS), "--encoder-embed-dim", str(HIDDEN),
               "--encoder-ffn-embed-dim", str(FFN), "--encoder-attention-heads", str(HEADS),
               "--max-positions", str(MAX_POS), "--tokens-per-sample", "32",
               "--restore-file", str(out / "model.pt"), "--reset-optimizer", "--reset-dataloader", "--reset-meters",
               "--optimizer", "adam", "--lr", "1e-4", "--batch-size", "4", "--max-update", "1", "--cpu",
               "--num-workers", "0", "--save-dir", str(tmp_path / "ckpt"), "--no-save", "--disable-validation"],
              timeout=300)
    log = res.stdout + res.stderr
    assert "Loaded checkpoint" in log and "done training" in log, log[-2000:]


LARGE_LAYERS = int(os.environ.get("M3P_LARGE_LAYERS", "2"))


def test_large_import_parity_and_training(tmp_path, tiny_world):
    """XLM-R large's shape (1024 wide, 16 heads of 64, FFN 4096, 514 positions; LARGE_LAYERS deep, the
    world's vocabulary) from HF's safetensors: the import reproduces HF's states and masked-LM logits,
    and ``fairseq-train --arch m3p_large --restore-file`` trains the four objectives from it with
    activation checkpointing."""
    transformers = pytest.importorskip("transformers")
    from m3p_fairseq.data.region_store import RegionStore

    data = tiny_world["data"]
    cfg = transformers.XLMRobertaConfig(
        vocab_size=_vocab(data), hidden_size=1024, num_hidden_layers=LARGE_LAYERS, num_attention_heads=16,
        intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    hf = transformers.XLMRobertaForMaskedLM(cfg)
    _randomize(hf, 5, scale=0.02)
    hf.tie_weights()
    hf.eval()
    src = tmp_path / "hf"
    _save_hf(hf, src, safetensors=True)
    shutil.copy(os.path.join(data, "sentencepiece.bpe.model"), src)
    store = RegionStore(os.path.join(data, "regions", "train.json"))
    out = tmp_path / "large"
    dims = import_xlmr(str(src), str(out), region_feat_dim=store.feat_dim, num_region_classes=store.num_classes)
    assert (dims.layers, dims.embed_dim, dims.heads, dims.max_positions) == (LARGE_LAYERS, 1024, 16, 512)

    hub = M3PHub.from_pretrained(str(out))
    tokens = _batch(hub)
    mask = tokens.ne(1)
    with torch.no_grad():
        ours = hub.extract_features(tokens)
        ref = hf.roberta(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        logits = hub.model(tokens, masked_tokens=mask)["lm_logits"]
        ref_logits = hf(input_ids=tokens, attention_mask=mask.long()).logits[mask]
    err = (ours - ref)[mask].abs().max().item()
    print(f"HF parity, XLM-R large's shape at {LARGE_LAYERS} layers: max abs error {err:.2e}")
    assert err < 1e-4 and (logits - ref_logits).abs().max().item() < 1e-4
    del hub, hf

    updates = 8
    res = run(["fairseq-train", data, "--user-dir", "m3p_fairseq", "--task", "multitask_multimodal",
               "--arch", "m3p_large", "--encoder-layers", str(LARGE_LAYERS), "--criterion", "m3p_pretrain",
               "--objective-ratios", "1,1,1,1", "--checkpoint-activations",
               "--restore-file", str(out / "model.pt"), "--reset-optimizer", "--reset-dataloader", "--reset-meters",
               "--optimizer", "adam", "--lr", "1e-5", "--batch-size", "2", "--max-update", str(updates), "--cpu",
               "--num-workers", "0", "--seed", "1", "--save-dir", str(tmp_path / "ckpt"), "--no-save",
               "--disable-validation", "--log-format", "json", "--log-interval", "1"], timeout=600)
    log = res.stdout + res.stderr
    assert "Loaded checkpoint" in log and "done training" in log, log[-2000:]
    recs = [json.loads(line[line.index("{"):]) for line in log.splitlines() if "| train_inner |" in line]
    assert [int(r["num_updates"]) for r in recs] == list(range(1, updates + 1)), log[-2000:]
    trained = {o for r in recs for o in ("xmlm", "mmlm", "mrm", "vlm") if float(r.get(f"{o}_batches") or 0) > 0}
    assert len(trained) >= 3 and all(math.isfinite(float(r["loss"])) for r in recs), recs
    assert "(fc1): Linear(in_features=1024, out_features=4096" in log  # the model fairseq-train printed: large's


def test_wrong_inputs_give_one_line(tmp_path, capsys, spm_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "empty"), str(tmp_path / "out")])
    assert "neither a fairseq XLM-R folder" in str(e.value) and "\n" not in str(e.value)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(SystemExit) as e:
        main([str(bad), str(tmp_path / "out")])
    assert "model_type 'bert'" in str(e.value)

    (bad / "config.json").write_text('{"model_type": "xlm-roberta"}')
    with pytest.raises(SystemExit) as e:
        main([str(bad), str(tmp_path / "out")])
    assert "no integer 'hidden_size'" in str(e.value)
    (bad / "config.json").write_text('{"model_type": "xlm-roberta", "hidden_size": 32, "num_hidden_layers": 2, '
                                     '"num_attention_heads": 4, "intermediate_size": 48}')
    (bad / "pytorch_model.bin").write_bytes(b"this is not a checkpoint")
    shutil.copy(os.path.join(spm_dir, "sentencepiece.bpe.model"), bad)
    with pytest.raises(SystemExit) as e:
        main([str(bad), str(tmp_path / "out")])
    assert "pytorch_model.bin: a text file, not a checkpoint" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_vocabulary_mismatch_is_named(tmp_path, spm_dir):
    """A vocabulary that does not match the sentencepiece model is named, not loaded."""
    hf = _hf_model(spm_dir, masked_lm=False)
    hf.resize_token_embeddings(_vocab(spm_dir) + 3)
    _save_hf(hf, tmp_path / "hf", safetensors=False)
    shutil.copy(os.path.join(spm_dir, "sentencepiece.bpe.model"), tmp_path / "hf")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "hf"), str(tmp_path / "out")])
    assert "token embeddings" in str(e.value)
    assert not (tmp_path / "out").exists()
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".import-")]
    assert leftovers == []
