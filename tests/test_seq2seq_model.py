"""The generation model: shapes, weight ties, XLM-R names, language ids, incremental decoding."""
import argparse
import copy

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.sequence_generator import SequenceGenerator

from m3p_fairseq.errors import M3PInputError
from m3p_fairseq.models.m3p import M3PModel, m3p_tiny
from m3p_fairseq.models.m3p_seq2seq import (
    DECODER_ONLY_PARTS,
    SHARED_LAYER_PARTS,
    M3PSeq2SeqModel,
    assert_ties,
    m3p_seq2seq_tiny,
)


def _setup(data, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data, "--cpu", *extra])
    cfg = convert_namespace_to_omegaconf(args)
    return tasks.setup_task(cfg.task), cfg


@pytest.fixture(scope="module")
def gen_task(tiny_world):
    return _setup(tiny_world["data"], "--task", "m3p_captioning", "--arch", "m3p_seq2seq_tiny",
                  "--criterion", "m3p_generation")


@pytest.fixture(scope="module")
def model(gen_task):
    task, cfg = gen_task
    torch.manual_seed(0)
    m = task.build_model(copy.deepcopy(cfg.model))
    # the language vectors start at zero; give them values so that language ids matter here
    with torch.no_grad():
        m.encoder.sentence_encoder.embed_positions.embed_langs.weight.normal_(0, 0.5)
    m.eval()
    return m


def _batch(model, bsz=3, text=7, regions=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = model.encoder.dictionary
    src = torch.randint(d.nspecial, len(d) - 1, (bsz, text), generator=g)
    src[:, 0], src[:, -1] = d.bos(), d.eos()
    src[0, -2:] = d.pad()
    pad = torch.zeros(bsz, regions, dtype=torch.bool)
    pad[1, -2:] = True
    return {"src_tokens": src, "src_lengths": src.ne(d.pad()).sum(1),
            "src_lang": torch.tensor([0, 1, 2])[:bsz], "tgt_lang": torch.tensor([3, 1, 0])[:bsz],
            "regions": torch.rand(bsz, regions, 32, generator=g), "region_boxes": torch.rand(bsz, regions, 5, generator=g),
            "region_padding_mask": pad}


def _prev(model, bsz=3, length=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    d = model.encoder.dictionary
    prev = torch.randint(d.nspecial, len(d) - 1, (bsz, length), generator=g)
    prev[:, 0] = d.eos()
    return prev


def test_shapes_text_regions_and_both(model):
    b, prev = _batch(model), _prev(model)
    vocab = len(model.encoder.dictionary)
    regions_only = dict(b, src_tokens=b["src_tokens"][:, :0], src_lengths=torch.zeros(3, dtype=torch.long))
    text_only = {k: v for k, v in b.items() if not k.startswith("region")}
    for inputs, src_len in ((b, 7 + 5), (regions_only, 5), (text_only, 7)):
        enc = model.encoder(**inputs)
        assert enc["encoder_out"][0].shape == (src_len, 3, model.args.encoder_embed_dim)
        assert enc["encoder_padding_mask"][0].shape == (3, src_len)
        logits, extra = model(**inputs, prev_output_tokens=prev)
        assert logits.shape == (3, 6, vocab)
        assert len(extra["inner_states"]) == 2 + 1


def test_decoder_shares_everything_but_cross_attention(model):
    enc, dec = model.encoder.sentence_encoder, model.decoder
    assert_ties(enc, dec)  # the checks the model runs when it is built
    assert dec.embed_tokens is enc.embed_tokens and dec.output_projection.weight is enc.embed_tokens.weight
    assert dec.embed_positions is enc.embed_positions and dec.layernorm_embedding is enc.layernorm_embedding
    for e, d in zip(enc.layers, dec.layers):
        for part in SHARED_LAYER_PARTS:
            assert getattr(d, part) is getattr(e, part)
        for part in DECODER_ONLY_PARTS:
            assert all(getattr(d, part) is not getattr(e, p) for p in SHARED_LAYER_PARTS)
    # the decoder's own parameters are exactly its cross-attention blocks
    shared = {id(p) for p in model.encoder.parameters()}
    own = [n for n, p in dec.named_parameters() if id(p) not in shared]
    assert own and all(n.split(".")[2] in DECODER_ONLY_PARTS for n in own), own
    n_cross = sum(p.numel() for n, p in dec.named_parameters() if id(p) not in shared)
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(p.numel() for p in model.encoder.parameters()) + n_cross


def test_encoder_names_are_the_understanding_models(gen_task, model):
    """Every text-encoder and region parameter of the understanding model (XLM-R's names under
    encoder.sentence_encoder) exists here with the same shape, so imported weights load."""
    task, _ = gen_task
    args = argparse.Namespace(arch="m3p_tiny", tokens_per_sample=128)
    m3p_tiny(args)  # the tiny generation model is m3p_tiny's text encoder plus a decoder sharing it
    und = M3PModel.build_model(args, task)
    ours = model.state_dict()
    for k, v in und.state_dict().items():
        if k.startswith(("encoder.sentence_encoder.", "encoder.region_embed.")) and not k.endswith(".version"):
            assert k in ours and ours[k].shape == v.shape, k
    # and such an encoder-only state dict loads: shared decoder parts follow their encoder twins
    fresh = task.build_model(copy.deepcopy(model.args))
    fresh.load_state_dict(und.state_dict(), strict=True)
    enc, dec = fresh.encoder.sentence_encoder, fresh.decoder
    assert torch.equal(enc.layers[1].fc1.weight, und.encoder.sentence_encoder.layers[1].fc1.weight)
    assert_ties(enc, dec)


def test_language_ids_reach_encoder_text_and_every_decoder_token(model):
    b, prev = _batch(model), _prev(model)
    regions_only = dict(b, src_tokens=b["src_tokens"][:, :0])
    other = dict(regions_only, src_lang=torch.tensor([4, 4, 4]))
    # regions carry no language: the encoder output is the same for any source language
    e1, e2 = model.encoder(**regions_only), model.encoder(**other)
    assert torch.allclose(e1["encoder_out"][0], e2["encoder_out"][0])
    # text does
    assert not torch.allclose(model.encoder(**b)["encoder_out"][0], model.encoder(**dict(b, src_lang=b["tgt_lang"]))["encoder_out"][0])
    # the target language changes the decoder's output at every position
    out1, _ = model(**regions_only, prev_output_tokens=prev)
    out2, _ = model(**dict(regions_only, tgt_lang=torch.tensor([2, 2, 2])), prev_output_tokens=prev)
    assert (out1 - out2).abs().amax(-1).gt(1e-4).all()


def test_incremental_decoding_equals_full_decoding_with_beam_reordering(model):
    b, prev = _batch(model), _prev(model, length=8)
    enc = model.encoder(**b)
    full, _ = model.decoder(prev, encoder_out=enc)
    state, steps = {}, []
    for t in range(4):
        out, _ = model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)
        assert out.shape[1] == 1
        steps.append(out[:, 0])
    assert torch.allclose(torch.stack(steps, 1), full[:, :4], atol=1e-5)
    # as a beam search does: reorder (and duplicate) rows of the cache and of encoder_out mid-way
    order = torch.tensor([2, 0, 0, 1])
    model.decoder.reorder_incremental_state_scripting(state, order)
    enc2 = model.encoder.reorder_encoder_out(enc, order)
    assert torch.equal(enc2["tgt_lang"][0], b["tgt_lang"][order])
    for t in range(4, 8):
        out, _ = model.decoder(prev[order, : t + 1], encoder_out=enc2, incremental_state=state)
        assert torch.allclose(out[:, 0], full[order, t], atol=1e-5), t


def test_sequence_generator_matches_step_by_step_full_decoding(model):
    """fairseq's SequenceGenerator (incremental, beam 1) = greedy decoding that re-runs the whole
    decoder at every step."""
    b = _batch(model)
    d = model.encoder.dictionary
    sample = {"net_input": dict(b)}
    gen = SequenceGenerator([model], d, beam_size=1, max_len_b=10, min_len=1)
    hyps = gen.generate([model], sample)
    enc = model.encoder(**b)
    for i in range(3):
        enc_i = model.encoder.reorder_encoder_out(enc, torch.tensor([i]))
        tokens = [d.eos()]
        for step in range(11):
            logits, _ = model.decoder(torch.tensor([tokens]), encoder_out=enc_i)
            lp = torch.log_softmax(logits[0, -1].float(), -1)
            lp[d.pad()] = -float("inf")
            if step == 0:
                lp[d.eos()] = -float("inf")  # min_len
            nxt = d.eos() if step == 10 else int(lp.argmax())
            tokens.append(nxt)
            if nxt == d.eos():
                break
        assert hyps[i][0]["tokens"].tolist() == tokens[1:]


def test_bad_configurations_fail_with_one_line(gen_task):
    task, cfg = gen_task
    args = copy.deepcopy(cfg.model)
    args.decoder_layers = 3
    with pytest.raises(M3PInputError, match="--decoder-layers 3 differs from --encoder-layers 2"):
        task.build_model(args)
    args = argparse.Namespace(arch="m3p_seq2seq_tiny", langs="")
    m3p_seq2seq_tiny(args)
    with pytest.raises(M3PInputError, match="--langs"):
        M3PSeq2SeqModel.build_model(args, task)


def test_tasks_refuse_the_other_kind_of_model(tiny_world):
    data = tiny_world["data"]
    common = ("--task", "multitask_multimodal", "--cpu")
    task, cfg = _setup(data, *common, "--objectives", "xdae,ic", "--arch", "m3p_tiny", "--criterion", "m3p_generation")
    with pytest.raises(M3PInputError, match="multitask_multimodal needs an M3P generation model"):
        task.build_model(cfg.model)
    task, cfg = _setup(data, *common, "--objectives", "xmlm", "--arch", "m3p_seq2seq_tiny", "--criterion", "m3p_pretrain")
    with pytest.raises(M3PInputError, match="needs an M3P understanding model"):
        task.build_model(cfg.model)
    with pytest.raises(M3PInputError, match="mixes understanding"):
        _setup(data, *common, "--objectives", "xmlm,xdae", "--arch", "m3p_tiny", "--criterion", "m3p_pretrain")
    task, cfg = _setup(data, "--task", "m3p_captioning", "--cpu", "--arch", "m3p_tiny", "--criterion", "m3p_generation")
    with pytest.raises(M3PInputError, match="m3p_captioning needs an M3P generation model"):
        task.build_model(cfg.model)


def test_caption_fine_tuning_batches_go_through_the_generation_criterion(gen_task, model):
    from m3p_fairseq.criterions.m3p_generation import M3PGenerationCriterion

    task, _ = gen_task
    task.load_dataset("train")
    ds = task.dataset("train")
    batch = ds.collater([ds[i] for i in range(4)])
    loss, sample_size, log = M3PGenerationCriterion(task, label_smoothing=0.1)(model, batch)
    # a fine-tuning batch has no objective: the plain keys only
    assert torch.isfinite(loss) and sample_size == batch["ntokens"] == log["ntokens"]
    assert not any(k.startswith(("ic_", "xdae_", "dic_", "caption_")) for k in log)
    assert 0 <= log["ncorrect"] <= batch["ntokens"]
