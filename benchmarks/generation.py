"""Beam-10 captions/s of M3P's generation model (m3p_seq2seq_base) with fairseq's incremental decoding,
against the same model decoding without a cache, and against fairseq's own ``transformer`` of the same
size (12 + 12 layers, 768, 8 heads) fed a source of as many tokens as the image has regions.

All three go through fairseq's SequenceGenerator. Every hypothesis is made to decode exactly
--length tokens (min_len = max_len), so the work does not depend on the random weights. "No cache"
hides the decoder behind a plain FairseqDecoder: SequenceGenerator then re-runs the decoder over the
whole prefix at every step, as a decoder without incremental state must.

    python benchmarks/generation.py            # prints one JSON line
"""
import argparse
import statistics
import time

import torch

from _common import StubTask, emit, set_threads


def no_cache(model):
    """The same model, its decoder seen by SequenceGenerator as non-incremental."""
    from fairseq.models import FairseqDecoder, FairseqEncoderDecoderModel

    class Decoder(FairseqDecoder):
        def __init__(self, inner):
            super().__init__(inner.dictionary)
            self.inner = inner

        def forward(self, prev_output_tokens, encoder_out=None, **kwargs):
            return self.inner(prev_output_tokens, encoder_out=encoder_out)

        def max_positions(self):
            return self.inner.max_positions()

    return FairseqEncoderDecoderModel(model.encoder, Decoder(model.decoder)).eval()


def build_seq2seq(task, arch, langs):
    import argparse as ap

    import m3p_fairseq  # noqa: F401
    from fairseq.models import ARCH_MODEL_REGISTRY

    args = ap.Namespace(arch=arch, langs=langs)
    return ARCH_MODEL_REGISTRY[arch].build_model(args, task)


def build_fairseq_transformer(task, dims):
    import argparse as ap

    from fairseq.models import ARCH_MODEL_REGISTRY
    from fairseq.models.transformer.transformer_legacy import base_architecture

    args = ap.Namespace(arch="transformer", encoder_layers=dims["layers"], decoder_layers=dims["layers"],
                        encoder_embed_dim=dims["dim"], decoder_embed_dim=dims["dim"],
                        encoder_ffn_embed_dim=dims["ffn"], decoder_ffn_embed_dim=dims["ffn"],
                        encoder_attention_heads=dims["heads"], decoder_attention_heads=dims["heads"],
                        share_all_embeddings=True, activation_fn="gelu", max_source_positions=512,
                        max_target_positions=128)
    base_architecture(args)
    return ARCH_MODEL_REGISTRY["transformer"].build_model(args, task)


def time_generate(runs, dictionary, a):
    """runs: name -> (model, sample). Runs alternate, so a load spike on the shared machine hits all
    of them alike; returns name -> (median seconds, hypotheses of the last run)."""
    from fairseq.sequence_generator import SequenceGenerator

    # SequenceGenerator decodes with the models it was built with (generate's argument is unused)
    gens = {k: SequenceGenerator([m], dictionary, beam_size=a.beam, max_len_a=0, max_len_b=a.length,
                                 min_len=a.length) for k, (m, _) in runs.items()}
    times, outs = {k: [] for k in runs}, {}
    for i in range(a.repeats + 1):
        for k, (m, sample) in runs.items():
            t0 = time.perf_counter()
            outs[k] = gens[k].generate([m], sample)
            if i:  # the first run warms the allocator
                times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(times[k]), outs[k]) for k in runs}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4, help="images per batch (beams are on top)")
    p.add_argument("--regions", type=int, default=36)
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--length", type=int, default=16, help="tokens every hypothesis decodes")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--repeats", type=int, default=2, help="timed runs per model, after one warm-up")
    p.add_argument("--arch", default="m3p_seq2seq_base")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    threads = set_threads(a.threads)
    torch.manual_seed(0)
    task = StubTask(a.vocab)
    d = task.dictionary
    m3p = build_seq2seq(task, a.arch, "en,de").eval()
    layer = m3p.encoder.sentence_encoder.layers[0]
    dims = {"layers": len(m3p.encoder.sentence_encoder.layers), "dim": layer.embed_dim,
            "ffn": layer.fc1.out_features, "heads": layer.self_attn.num_heads}
    peer = build_fairseq_transformer(task, dims).eval()

    bsz = a.images
    m3p_sample = {"net_input": {
        "src_tokens": torch.zeros(bsz, 0, dtype=torch.long), "src_lengths": torch.zeros(bsz, dtype=torch.long),
        "src_lang": torch.zeros(bsz, dtype=torch.long), "tgt_lang": torch.zeros(bsz, dtype=torch.long),
        "regions": torch.randn(bsz, a.regions, 2048).abs(), "region_boxes": torch.rand(bsz, a.regions, 5),
        "region_padding_mask": torch.zeros(bsz, a.regions, dtype=torch.bool)}}
    src = torch.randint(4, a.vocab - 1, (bsz, a.regions))
    src[:, -1] = d.eos()
    peer_sample = {"net_input": {"src_tokens": src, "src_lengths": torch.full((bsz,), a.regions)}}

    with torch.no_grad():
        res = time_generate({"cache": (m3p, m3p_sample), "no_cache": (no_cache(m3p), m3p_sample),
                             "peer": (peer, peer_sample)}, d, a)
    (t_cache, out), (t_nocache, out_nocache), (t_peer, _) = res["cache"], res["no_cache"], res["peer"]
    # the cache changes the speed, not the result
    same = all(torch.equal(x[0]["tokens"], y[0]["tokens"]) for x, y in zip(out, out_nocache))
    lengths = sorted({len(h[0]["tokens"]) for h in out})
    emit({
        "benchmark": "generation", "threads": threads, "arch": a.arch, **dims, "beam": a.beam, "images": bsz,
        "regions": a.regions, "length": a.length, "decoded_lengths": lengths, "vocab": len(d),
        "no_cache_same_output": same,
        "m3p_captions_per_s": round(bsz / t_cache, 3),
        "m3p_no_cache_captions_per_s": round(bsz / t_nocache, 3),
        "fairseq_transformer_captions_per_s": round(bsz / t_peer, 3),
        "cache_speedup": round(t_nocache / t_cache, 2),
        "speed_vs_fairseq_transformer": round(t_peer / t_cache, 3),
    })


if __name__ == "__main__":
    main()
