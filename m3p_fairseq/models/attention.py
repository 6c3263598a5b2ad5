"""Self-attention of the joint encoder through one fused projection and torch's
``scaled_dot_product_attention``.

fairseq's ``MultiheadAttention`` (0.12) hands self-attention to ``F.multi_head_attention_forward``:
three input projections, the padding mask turned into an additive float mask repeated per head,
and, with attention dropout in training on a CPU, torch's composite SDPA path (q and k each
scaled, a "safe" softmax, dropout, two matrix products, every step kept for backward).
``SDPAMultiheadAttention`` computes the same function with one projection of the three weights
stacked, the padding mask built once and broadcast over heads, and one
``scaled_dot_product_attention`` call; where torch's kernels allow (no attention dropout on a CPU; flash / memory-efficient
attention on a GPU, dropout included) that call is fused. The dropout case on a CPU is written
out (scaled ``baddbmm``, softmax, dropout, ``bmm``): the same maths in fewer passes.

A float ``attn_mask`` (the decoder's causal mask) is added as fairseq adds it. Everything else
(incremental decoding, static keys, attention weights asked for, a boolean ``attn_mask``,
quantization noise, key/value biases, ONNX or TorchScript) goes to fairseq's own forward
unchanged. The class only replaces ``forward``: parameters, their names and the module objects
stay those fairseq built, so checkpoints, weight ties and ``upgrade_state_dict`` are
untouched.

Queries at some positions only: within ``with attn.keys_from(source):`` the module's self-attention
takes its queries from what it is given (S x B x C, any S) and its keys and values from ``source``
(L x B x C), the padding mask being over the L keys. The encoder runs its last layer this way at
the positions a loss reads (``ReadPositions`` in m3p.py): each query's output is the full
attention's at that position, the keys' and values' projections are computed once at every
position, the queries' at S only.

``use_fused_attention(module)`` switches every self-attention module below ``module``
(the decoder of the generation model shares the encoder's: its training steps take the fused path
with the causal mask, its incremental decoding fairseq's); ``use_fused_attention(module, False)``
switches back.
"""
import contextlib

import torch
import torch.nn.functional as F
from fairseq.modules.multihead_attention import MultiheadAttention


class SDPAMultiheadAttention(MultiheadAttention):
    _keys = None  # set by keys_from (a class default: modules are switched to this class, not built as it)

    def fusable(self):
        """What the fused path needs of the module itself (the call's arguments are checked per call)."""
        return (
            self.self_attention and self.bias_k is None and not self.add_zero_attn and self.qkv_same_dim
            and not (self.onnx_trace or self.use_xformers or self.skip_embed_dim_check)
            and not torch.jit.is_scripting()
            # quantization noise acts through forward pre-hooks of the projections
            and not any(p._forward_pre_hooks or p._forward_hooks for p in (self.q_proj, self.k_proj, self.v_proj))
        )

    @contextlib.contextmanager
    def keys_from(self, source):
        """Within: queries are what forward is given (S x B x C), keys and values ``source`` (L x B x C)."""
        self._keys = source
        try:
            yield
        finally:
            self._keys = None

    def _fused_applies(self, query, key, value, key_padding_mask, incremental_state, need_weights, static_kv,
                       attn_mask, before_softmax, need_head_weights):
        return (
            key is query and value is query and incremental_state is None
            # an additive float mask over (query, key), as fairseq's decoder passes its causal one
            and (attn_mask is None or (attn_mask.dim() == 2 and attn_mask.is_floating_point()))
            and not (need_weights or need_head_weights or static_kv or before_softmax)
            and self.fusable() and query.device.type != "xla"
            and (key_padding_mask is None or key_padding_mask.dim() == 2)
        )

    def forward(self, query, key, value, key_padding_mask=None, incremental_state=None, need_weights=True,
                static_kv=False, attn_mask=None, before_softmax=False, need_head_weights=False):
        fused = self._fused_applies(query, key, value, key_padding_mask, incremental_state, need_weights, static_kv,
                                    attn_mask, before_softmax, need_head_weights)
        if self._keys is not None and not fused:
            raise RuntimeError("queries at some positions only need the fused self-attention path")
        if not fused:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                                   incremental_state=incremental_state, need_weights=need_weights,
                                   static_kv=static_kv, attn_mask=attn_mask, before_softmax=before_softmax,
                                   need_head_weights=need_head_weights)
        tgt_len, bsz, dim = query.shape
        heads, head_dim = self.num_heads, self.head_dim
        projections = (self.q_proj, self.k_proj, self.v_proj)
        if self._keys is None:
            # T x B x 3C -> 3 x B x H x T x D: views, no copy
            q, k, v = _stacked_linear(query, projections).view(tgt_len, bsz, 3, heads, head_dim).permute(2, 1, 3, 0, 4)
        else:
            src_len = self._keys.size(0)
            q = self.q_proj(query).view(tgt_len, bsz, heads, head_dim).permute(1, 2, 0, 3)
            k, v = _stacked_linear(self._keys, projections[1:]).view(src_len, bsz, 2, heads, head_dim).permute(
                2, 1, 3, 0, 4)
        mask = _additive_mask(key_padding_mask, attn_mask, q.dtype)
        p = self.dropout_module.p if (self.training or self.dropout_module.apply_during_inference) else 0.0
        if p > 0 and query.device.type == "cpu":
            out = _attention_with_dropout(q, k, v, mask, p, self.scaling)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=self.scaling)
        # B x H x T x D -> T x B x C, the layout fairseq's layers work in
        out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, dim)
        return self.out_proj(out), None


def _stacked_linear(x, projections):
    """The projections of ``x`` by several nn.Linear at once (one matrix product), concatenated."""
    weight = torch.cat([p.weight for p in projections])
    bias = None if projections[0].bias is None else torch.cat([p.bias for p in projections])
    return F.linear(x, weight, bias)


def _additive_mask(key_padding_mask, attn_mask, dtype):
    """None, or the float mask added to the scores, (B or 1) x 1 x (T or 1) x S: -inf on padded keys
    (``key_padding_mask``, B x S, True = pad) plus ``attn_mask`` (T x S), heads broadcast."""
    mask = None
    if key_padding_mask is not None:
        pad = key_padding_mask.bool()
        mask = torch.zeros(pad.shape, dtype=dtype, device=pad.device).masked_fill_(pad, float("-inf"))[:, None, None]
    if attn_mask is not None:
        mask = attn_mask.to(dtype)[None, None] if mask is None else mask + attn_mask.to(dtype)
    return mask


def _attention_with_dropout(q, k, v, mask, p, scale):
    """softmax(scale * q k^T + mask) with dropout, times v (B x H x T x D queries, B x H x S x D keys and
    values): what torch's CPU SDPA does when dropout is on, with the scaling and the mask folded into one
    ``baddbmm``."""
    bsz, heads, tgt_len, head_dim = q.shape
    q3, k3, v3 = (t.reshape(bsz * heads, t.size(2), head_dim) for t in (q, k, v))
    if mask is None:
        bias, beta = q3.new_zeros(1, 1, 1), 0.0
    else:  # B*H x (T or 1) x S: baddbmm broadcasts it over the query positions itself
        bias, beta = mask.expand(bsz, heads, *mask.shape[2:]).reshape(bsz * heads, *mask.shape[2:]), 1.0
    scores = torch.baddbmm(bias, q3, k3.transpose(1, 2), beta=beta, alpha=scale)
    probs = F.dropout(torch.softmax(scores, dim=-1), p=p, training=True)
    return torch.bmm(probs, v3).view(bsz, heads, tgt_len, head_dim)


def use_fused_attention(module, fused=True):
    """Switches every self-attention ``MultiheadAttention`` below ``module`` to the fused forward (or
    back); returns how many were switched."""
    src, dst = (MultiheadAttention, SDPAMultiheadAttention) if fused else (SDPAMultiheadAttention, MultiheadAttention)
    n = 0
    for m in module.modules():
        if type(m) is src and m.self_attention:
            m.__class__ = dst  # same object, parameters and hooks: only forward changes
            n += 1
    return n
