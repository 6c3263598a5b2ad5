"""Training step of M3P's understanding model on the CPU in fp32, side by side with HuggingFace's
XLMRobertaModel of the same size fed the same text + projected regions, at the paper's shape and at
the demo's.

One step = MMLM as pre-training runs it: text (15% of it masked) + image regions through the joint
encoder, masked-LM head on the masked tokens, cross-entropy, backward, Adam. Contestants (``--contestants``),
their steps alternating so all see the same machine load:

* ``m3p``: the plugin's model and criterion as fairseq-train runs them (fused self-attention,
  m3p_fairseq/models/attention.py; the last layer only at the masked tokens the loss reads);
* ``m3p_full_last_layer``: the same model object computing the last layer at every position
  (``--full-last-layer``), i.e. the step before the last layer was restricted;
* ``m3p_compiled``: ``m3p`` with its encoder layers under torch.compile (``--compile-layers``, inductor;
  the warm-up step pays the compile);
* ``m3p_fairseq_attn``: the same model object with fairseq's own MultiheadAttention switched back
  (``use_fused_attention(model, False)``; every position of the last layer);
* ``hf``: XLMRobertaModel (its default attention implementation) given ``inputs_embeds`` = its own word
  embeddings of the text followed by the same RegionEmbedding of the regions, with the same LM head
  (fairseq's RobertaLMHead, tied to its word embeddings), loss and dropout as the M3P model.

Shapes (``--preset``, several allowed; one JSON line each):

* ``paper``: m3p_base (12 x 768, 12 heads, dropout 0.1), XLM-R's 250,002-piece vocabulary,
  128 text tokens + 36 regions of 2048-d features, batch 8;
* ``demo``: m3p_tiny (2 x 128, 4 heads, no dropout) as make demo pre-trains it: batch 64, the demo's
  ~2,000-piece vocabulary, captions of 16 tokens + 10 regions (the embedded world's sizes).

Speeds are tokens (text + regions) per second of the median step; MFU = model FLOPs/s (matrix
products, 3 x forward) / the measured matrix-multiply rate: on a CPU fp32 of the FFN's shape on the
same threads, on a GPU a dense 8192^3 product in the step's precision. On a GPU (``--device cuda
--dtype bf16|fp16``: torch autocast, fp16 with a gradient scaler) it also reports each contestant's
peak allocated memory.

    python benchmarks/train_step.py                          # both presets, 5 timed steps each
    python benchmarks/train_step.py --preset paper --contestants m3p m3p_compiled hf --threads 1
    python benchmarks/train_step.py --preset paper --profile prof.txt
    python benchmarks/train_step.py --preset paper --batch 64 --device cuda --dtype bf16
"""
import contextlib
import argparse
import statistics
import time

import torch

from _common import StubTask, build_m3p, emit, encoder_train_flops, gemm_rate, m3p_dims, set_threads

PRESETS = {
    "paper": dict(arch="m3p_base", batch=8, text_len=128, regions=36, vocab=250002),
    "demo": dict(arch="m3p_tiny", batch=64, text_len=16, regions=10, vocab=2005),
}


def synthetic_batch(batch, text_len, regions, vocab, feat_dim, pad, mask_idx, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, vocab - 1, (batch, text_len), generator=g)
    tokens[:, 0], tokens[:, -1] = 0, 2  # <s> ... </s>
    masked = torch.rand(batch, text_len, generator=g) < 0.15
    masked[:, 0] = masked[:, -1] = False
    masked[:, 1] = True  # at least one per row
    target = torch.full_like(tokens, pad).masked_scatter(masked, tokens[masked])
    src = tokens.masked_fill(masked, mask_idx)
    feats = torch.randn(batch, regions, feat_dim, generator=g).abs()
    boxes = torch.rand(batch, regions, 5, generator=g)
    region_pad = torch.zeros(batch, regions, dtype=torch.bool)
    return {"objective": "mmlm", "nsentences": batch, "ntokens": int(src.ne(pad).sum()), "target": target,
            "net_input": {"src_tokens": src, "regions": feats, "region_boxes": boxes,
                          "region_padding_mask": region_pad}}


class HFPeer(torch.nn.Module):
    """XLMRobertaModel + the same region embedding, LM head, loss and dropout as the M3P side."""

    def __init__(self, vocab, dims, feat_dim, pad, dropout, attention_dropout):
        super().__init__()
        from fairseq.models.roberta.model import RobertaLMHead
        from transformers import XLMRobertaConfig, XLMRobertaModel

        from m3p_fairseq.models.m3p import RegionEmbedding

        cfg = XLMRobertaConfig(vocab_size=vocab, hidden_size=dims["dim"], num_hidden_layers=dims["layers"],
                               num_attention_heads=dims["heads"], intermediate_size=dims["ffn"],
                               max_position_embeddings=514, type_vocab_size=1, pad_token_id=pad,
                               hidden_act="gelu", hidden_dropout_prob=dropout,
                               attention_probs_dropout_prob=attention_dropout)
        self.roberta = XLMRobertaModel(cfg, add_pooling_layer=False)
        self.attn_implementation = self.roberta.config._attn_implementation
        self.region_embed = RegionEmbedding(feat_dim, dims["dim"])
        self.lm_head = RobertaLMHead(dims["dim"], vocab, "gelu", weight=self.roberta.embeddings.word_embeddings.weight)
        self.pad = pad

    def loss(self, sample):
        from m3p_fairseq.criterions.m3p_pretrain import masked_lm_loss

        net = sample["net_input"]
        tokens = net["src_tokens"]
        x = torch.cat([self.roberta.embeddings.word_embeddings(tokens),
                       self.region_embed(net["regions"], net["region_boxes"])], dim=1)
        keep = torch.cat([tokens.ne(self.pad), ~net["region_padding_mask"]], dim=1).long()
        h = self.roberta(inputs_embeds=x, attention_mask=keep).last_hidden_state
        masked = sample["target"].ne(self.pad)
        logits = self.lm_head(h[:, : tokens.size(1)], masked_tokens=masked)
        return masked_lm_loss(logits, sample["target"][masked], self.pad)


def measure(preset, a):
    from m3p_fairseq.criterions.m3p_pretrain import M3PPretrainCriterion
    from m3p_fairseq.models.attention import use_fused_attention

    s = {**PRESETS[preset], **{k: getattr(a, k) for k in PRESETS[preset] if getattr(a, k) is not None}}
    cuda = a.device == "cuda"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    torch.manual_seed(0)
    task = StubTask(s["vocab"], a.feat_dim)
    d = task.dictionary
    m3p = build_m3p(task, s["arch"])
    dims = m3p_dims(m3p)
    crit = M3PPretrainCriterion(task)
    hf = HFPeer(len(d), dims, a.feat_dim, d.pad(), m3p.args.dropout, m3p.args.attention_dropout)
    sample = synthetic_batch(s["batch"], s["text_len"], s["regions"], len(d), a.feat_dim, d.pad(), d.index("<mask>"))
    n_masked = int(sample["target"].ne(d.pad()).sum())
    m3p.to(a.device)
    hf.to(a.device)
    sample = _to(sample, a.device)
    autocast = (lambda: torch.autocast(a.device, dtype=dtype)) if dtype != torch.float32 else contextlib.nullcontext
    scaler = torch.amp.GradScaler(a.device, enabled=dtype == torch.float16)

    def train(opt, loss_fn):
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    layers = m3p.encoder.sentence_encoder.layers
    compiled = {}
    if "m3p_compiled" in a.contestants:
        for layer in layers:
            layer.compile()  # what --compile-layers does; switched off below for the other contestants
            compiled[layer] = layer._compiled_call_impl

    def m3p_step(opt, fused=True, full_last_layer=False, compile=False):
        use_fused_attention(m3p, fused)
        m3p.encoder.full_last_layer = full_last_layer
        for layer in compiled:
            layer._compiled_call_impl = compiled[layer] if compile else None
        train(opt, lambda: crit(m3p, sample)[0])

    def hf_step(opt):
        train(opt, lambda: hf.loss(sample))

    # the same optimizer for all; fused (one pass over each tensor) so that its elementwise work, which
    # counts no FLOPs and is the same for both models, weighs as little as it can on the step. The two
    # M3P contestants are one model (one copy of XLM-R's vocabulary in memory), one optimizer.
    m3p_opt = torch.optim.Adam(m3p.parameters(), lr=1e-4, fused=True)
    hf_opt = torch.optim.Adam(hf.parameters(), lr=1e-4, fused=True)
    runs = {"m3p": lambda: m3p_step(m3p_opt),
            "m3p_full_last_layer": lambda: m3p_step(m3p_opt, full_last_layer=True),
            "m3p_compiled": lambda: m3p_step(m3p_opt, compile=True),
            "m3p_fairseq_attn": lambda: m3p_step(m3p_opt, fused=False),
            "hf": lambda: hf_step(hf_opt)}
    runs = {k: runs[k] for k in a.contestants}
    m3p.train()
    hf.train()
    gemm_shape = dict(m=8192, k=8192, n=8192) if cuda else \
        dict(m=s["batch"] * (s["text_len"] + s["regions"]), k=dims["dim"], n=dims["ffn"])
    gemm_shape.update(dtype=dtype, device=a.device)
    peak = gemm_rate(**gemm_shape)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = {k: [] for k in runs}
    cpu_times = {k: [] for k in runs}  # this process's CPU seconds: on a shared machine, time others took is not in it
    peak_mem = {k: 0 for k in runs}
    for i in range(a.steps + 1):
        for k, step in runs.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            sync()
            if i > 0:  # the first step allocates Adam's state and warms the allocator
                times[k].append(time.perf_counter() - t0)
                cpu_times[k].append(time.process_time() - c0)
            if cuda:
                peak_mem[k] = max(peak_mem[k], torch.cuda.max_memory_allocated())

    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with open(a.profile, "a") as f:
            for k, step in runs.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    step()
                f.write(f"== {preset}: {k}\n"
                        + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.profile_rows) + "\n")

    # the machine may be shared: the best of a rate taken before and one after the steps
    peak = max(peak, gemm_rate(**gemm_shape))
    flops = encoder_train_flops(dims, s["batch"], s["text_len"], s["regions"], n_masked, len(d), a.feat_dim)
    tokens = s["batch"] * (s["text_len"] + s["regions"])
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"benchmark": "train_step", "preset": preset,
           "device": torch.cuda.get_device_name(0) if cuda else "cpu", "dtype": a.dtype, "threads": a.threads,
           **s, **dims, "dropout": m3p.args.dropout, "attention_dropout": m3p.args.attention_dropout,
           "hf_attn_implementation": hf.attn_implementation, "steps": a.steps}
    for k in runs:
        out[f"{k}_step_s"] = round(med[k], 4)
        out[f"{k}_tokens_per_s"] = round(tokens / med[k], 1)
        if cuda:
            out[f"{k}_peak_mem_gb"] = round(peak_mem[k] / 2 ** 30, 2)
    # each M3P contestant against HF: the median step, the fastest step, and CPU seconds (exact with --threads 1;
    # more threads add their spin waits): on a shared machine the last two are the least disturbed estimates
    for k in [k for k in runs if k != "hf" and "hf" in runs]:
        name = "" if k == "m3p" else k[len("m3p"):]
        out[f"speedup{name}_vs_hf"] = round(med["hf"] / med[k], 3)
        out[f"speedup{name}_vs_hf_best_step"] = round(min(times["hf"]) / min(times[k]), 3)
        out[f"speedup{name}_vs_hf_cpu_time"] = round(statistics.median(cpu_times["hf"])
                                                     / statistics.median(cpu_times[k]), 3)
    out.update({
        # FLOPs of the full model (every position of every layer): for m3p, which skips the last layer's
        # unread positions, an effective rate
        "gemm_gflops": round(peak / 1e9, 1), "step_gflop": round(flops / 1e9, 1),
        **{("mfu" if k == "m3p" else f"{k}_mfu"): round(flops / med[k] / peak, 3) for k in runs},
        "step_s_all": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "cpu_s_all": {k: [round(t, 3) for t in v] for k, v in cpu_times.items()},
    })
    emit(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", nargs="+", choices=sorted(PRESETS), default=["paper", "demo"])
    p.add_argument("--arch", help="override the preset's architecture")
    p.add_argument("--batch", type=int, help="override the preset's batch size")
    p.add_argument("--text-len", type=int, help="override: text tokens per example, <s> and </s> included")
    p.add_argument("--regions", type=int, help="override: regions per image")
    p.add_argument("--vocab", type=int, help="override: dictionary size")
    p.add_argument("--feat-dim", type=int, default=2048)
    p.add_argument("--steps", type=int, default=5, help="timed steps per contestant, after one warm-up step")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: every core)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="bf16 / fp16: torch autocast (fp16 with a gradient scaler), fp32 master weights")
    p.add_argument("--contestants", nargs="+", default=["m3p", "m3p_full_last_layer", "hf"],
                   choices=["m3p", "m3p_full_last_layer", "m3p_compiled", "m3p_fairseq_attn", "hf"])
    p.add_argument("--profile", default="", help="append torch.profiler tables of one step of each contestant")
    p.add_argument("--profile-rows", type=int, default=25)
    a = p.parse_args()
    a.threads = set_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"train_step: --device cuda, but this torch ({torch.__version__}) sees no CUDA device")
    for preset in a.preset:
        measure(preset, a)


def _to(x, device):
    if torch.is_tensor(x):
        return x.to(device)
    return {k: _to(v, device) for k, v in x.items()} if isinstance(x, dict) else x


if __name__ == "__main__":
    main()
