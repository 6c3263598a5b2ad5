"""The fused self-attention (models/attention.py) trains the same step as fairseq's: loss and every
gradient within fp32 tolerance, on real padded batches of every objective, dropout off and on."""
import copy

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.modules.multihead_attention import MultiheadAttention

from m3p_fairseq.models.attention import SDPAMultiheadAttention, use_fused_attention

MODELS = {
    # every position of the last layer: fairseq's attention has no queries-at-some-positions mode, and dropout
    # draws the same masks only over the same shapes (test_lean_compute compares the two modes)
    "understanding": ["--arch", "m3p_tiny", "--criterion", "m3p_pretrain", "--objectives", "xmlm,mmlm,mrm,vlm",
                      "--full-last-layer"],
    "generation": ["--arch", "m3p_seq2seq_tiny", "--criterion", "m3p_generation", "--objectives", "xdae,ic,dic"],
}


def _setup(data, kind, dropout):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data, "--cpu", "--task", "multitask_multimodal", *MODELS[kind],
                                                "--dropout", str(dropout), "--attention-dropout", str(dropout)])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    return task, model, task.build_criterion(cfg.criterion)


def _one_batch_per_objective(task):
    task.load_dataset("train")
    itr = task.get_batch_iterator(task.dataset("train"), max_sentences=6, seed=1).next_epoch_itr(shuffle=True)
    batches = {}
    for sample in itr:
        batches.setdefault(sample["objective"], sample)
        if len(batches) == len(task.objectives):
            return batches
    raise AssertionError(f"objectives seen: {sorted(batches)}")


def _step(model, criterion, sample, seed=7):
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout draws for both: each path draws one mask of the same shape
    loss, _, _ = criterion(model, sample)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_step_equals_fairseq_step(tiny_world, kind, dropout):
    task, fused, criterion = _setup(tiny_world["data"], kind, dropout)
    unfused = copy.deepcopy(fused)
    assert use_fused_attention(unfused, False) == len(fused.encoder.sentence_encoder.layers)
    pad = task.dictionary.pad()
    for objective, sample in _one_batch_per_objective(task).items():
        net = sample["net_input"]
        padded = net["src_tokens"].eq(pad).any() or (net.get("region_padding_mask") is not None
                                                      and net["region_padding_mask"].any())
        assert padded, f"{objective}: the batch has no padding to mask"
        loss_f, grads_f = _step(fused, criterion, sample)
        loss_u, grads_u = _step(unfused, criterion, sample)
        torch.testing.assert_close(loss_f, loss_u, rtol=1e-5, atol=1e-6, msg=f"{kind} {objective} loss")
        assert grads_f.keys() == grads_u.keys()
        for name in grads_f:
            torch.testing.assert_close(grads_f[name], grads_u[name], rtol=1e-4, atol=1e-5,
                                       msg=lambda m, name=name: f"{kind} {objective} grad of {name}: {m}")


def test_only_encoder_self_attention_is_switched_and_names_stay(tiny_world):
    _, gen, _ = _setup(tiny_world["data"], "generation", 0.0)
    encoder, decoder = gen.encoder.sentence_encoder, gen.decoder
    for enc_layer, dec_layer in zip(encoder.layers, decoder.layers):
        assert type(enc_layer.self_attn) is SDPAMultiheadAttention
        # the shared module: the decoder's training steps (causal mask) take the fused path too, its
        # incremental decoding fairseq's (test_seq2seq_model checks beam search against full decoding)
        assert dec_layer.self_attn is enc_layer.self_attn
        assert type(dec_layer.encoder_attn) is MultiheadAttention
    names = list(gen.state_dict())
    plain = copy.deepcopy(gen)
    use_fused_attention(plain, False)
    assert list(plain.state_dict()) == names


def test_causal_mask_fused_and_other_cases_go_to_fairseq():
    torch.manual_seed(0)
    attn = MultiheadAttention(16, 4, self_attention=True)
    use_fused_attention(attn)
    x = torch.randn(5, 2, 16)
    _, weights = attn(x, x, x, need_weights=True)
    assert weights is not None and weights.shape == (2, 5, 5)  # attention weights asked for
    plain = copy.deepcopy(attn)
    use_fused_attention(plain, False)
    causal = torch.triu(torch.full((5, 5), float("-inf")), 1)  # fairseq decoder's, with a padded key
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    for mask in (causal, causal.isinf()):  # float: fused; boolean: fairseq's
        torch.testing.assert_close(attn(x, x, x, key_padding_mask=pad, attn_mask=mask, need_weights=False)[0],
                                   plain(x, x, x, key_padding_mask=pad, attn_mask=mask, need_weights=False)[0])
