"""Training step of M3P's understanding model at base size (12 x 768) on the CPU in fp32, side by side
with HuggingFace's XLMRobertaModel of the same size fed the same text + projected regions.

One step = MMLM as pre-training runs it: text (15% of it masked) + image regions through the joint
encoder, masked-LM head on the masked tokens, cross-entropy, backward, Adam. The M3P side is the
plugin's model and criterion; the HF side is XLMRobertaModel given ``inputs_embeds`` = its own word
embeddings of the text followed by the same RegionEmbedding of the regions, with the same LM head
(fairseq's RobertaLMHead, tied to its word embeddings) and loss. Steps of the two alternate, so both
see the same machine load. MFU = model FLOPs/s (matrix products, 3 x forward) / the measured fp32
matrix-multiply rate of the FFN's shape on the same threads.

    python benchmarks/train_step.py            # prints one JSON line
"""
import argparse
import statistics
import time

import torch

from _common import StubTask, build_m3p, emit, encoder_train_flops, gemm_rate, m3p_dims, set_threads


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
    """XLMRobertaModel + the same region embedding, LM head and loss as the M3P side."""

    def __init__(self, vocab, dims, feat_dim, pad):
        super().__init__()
        from fairseq.models.roberta.model import RobertaLMHead
        from transformers import XLMRobertaConfig, XLMRobertaModel

        from m3p_fairseq.models.m3p import RegionEmbedding

        cfg = XLMRobertaConfig(vocab_size=vocab, hidden_size=dims["dim"], num_hidden_layers=dims["layers"],
                               num_attention_heads=dims["heads"], intermediate_size=dims["ffn"],
                               max_position_embeddings=514, type_vocab_size=1, pad_token_id=pad,
                               hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
        self.roberta = XLMRobertaModel(cfg, add_pooling_layer=False)
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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text-len", type=int, default=64, help="text tokens per example, <s> and </s> included")
    p.add_argument("--regions", type=int, default=64, help="regions per image (the paper uses 10 to 100)")
    p.add_argument("--vocab", type=int, default=32000,
                   help="dictionary size (XLM-R's is 250002: its dense embedding gradient and Adam update "
                        "then dominate a CPU step, for both models alike)")
    p.add_argument("--feat-dim", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3, help="timed steps per model, after one warm-up step")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: every core)")
    p.add_argument("--arch", default="m3p_base")
    p.add_argument("--profile", default="", help="write torch.profiler tables of one step of each model to this file")
    a = p.parse_args()
    threads = set_threads(a.threads)
    torch.manual_seed(0)

    from m3p_fairseq.criterions.m3p_pretrain import M3PPretrainCriterion

    task = StubTask(a.vocab, a.feat_dim)
    d = task.dictionary
    m3p = build_m3p(task, a.arch)
    dims = m3p_dims(m3p)
    crit = M3PPretrainCriterion(task)
    hf = HFPeer(len(d), dims, a.feat_dim, d.pad())
    sample = synthetic_batch(a.batch, a.text_len, a.regions, len(d), a.feat_dim, d.pad(), d.index("<mask>"))
    n_masked = int(sample["target"].ne(d.pad()).sum())

    def m3p_step(opt):
        opt.zero_grad(set_to_none=True)
        loss, _, _ = crit(m3p, sample)
        loss.backward()
        opt.step()

    def hf_step(opt):
        opt.zero_grad(set_to_none=True)
        hf.loss(sample).backward()
        opt.step()

    runs = {"m3p": (m3p, m3p_step), "hf": (hf, hf_step)}
    # the same optimizer for both; fused (one pass over each tensor) so that its elementwise work, which
    # counts no FLOPs and is the same for both models, weighs as little as it can on the step
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4, fused=True) for k, (m, _) in runs.items()}
    for m, _ in runs.values():
        m.train()
    gemm_shape = dict(m=a.batch * (a.text_len + a.regions), k=dims["dim"], n=dims["ffn"])
    peak = gemm_rate(**gemm_shape)
    times = {k: [] for k in runs}
    for i in range(a.steps + 1):
        for k, (_, step) in runs.items():
            t0 = time.perf_counter()
            step(opts[k])
            if i > 0:  # the first step allocates Adam's state and warms the allocator
                times[k].append(time.perf_counter() - t0)

    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with open(a.profile, "w") as f:
            for k, (_, step) in runs.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    step(opts[k])
                f.write(f"== {k}\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30) + "\n")

    # the machine may be shared: the best of a rate taken before and one after the steps
    peak = max(peak, gemm_rate(**gemm_shape))
    flops = encoder_train_flops(dims, a.batch, a.text_len, a.regions, n_masked, len(d), a.feat_dim)
    tokens = a.batch * (a.text_len + a.regions)
    med = {k: statistics.median(v) for k, v in times.items()}
    emit({
        "benchmark": "train_step", "device": "cpu", "dtype": "fp32", "threads": threads, "arch": a.arch, **dims,
        "batch": a.batch, "text_len": a.text_len, "regions": a.regions, "vocab": len(d), "steps": a.steps,
        "m3p_step_s": round(med["m3p"], 4), "hf_step_s": round(med["hf"], 4),
        "m3p_tokens_per_s": round(tokens / med["m3p"], 1), "hf_tokens_per_s": round(tokens / med["hf"], 1),
        "speedup_vs_hf": round(med["hf"] / med["m3p"], 3),
        # fastest step of each: on a shared machine the least disturbed estimate
        "speedup_vs_hf_best_step": round(min(times["hf"]) / min(times["m3p"]), 3),
        "gemm_gflops": round(peak / 1e9, 1), "step_gflop": round(flops / 1e9, 1),
        "mfu": round(flops / med["m3p"] / peak, 3), "hf_mfu": round(flops / med["hf"] / peak, 3),
    })


if __name__ == "__main__":
    main()
