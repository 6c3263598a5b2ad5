"""Shared pieces of the benchmarks: models built without a data folder, synthetic batches, the
measured matrix-multiply rate that MFU is taken against, and the one JSON line each script prints."""
import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def emit(record):
    print(json.dumps(record, sort_keys=False), flush=True)


def set_threads(n):
    n = n or os.cpu_count()
    torch.set_num_threads(n)
    return n


def gemm_rate(m=2048, k=768, n=3072, dtype=torch.float32, device="cpu", seconds=2.0):
    """FLOP/s of one matrix product of the model's own FFN shape (tokens x d x 4d), best of a few
    timed bursts: the peak that MFU divides by, measured on this machine with these threads."""
    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    c = torch.empty(m, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    torch.matmul(a, b, out=c)
    sync()
    best, t_end = float("inf"), time.perf_counter() + seconds
    reps = 1
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        sync()
        dt = (time.perf_counter() - t0) / reps
        best = min(best, dt)
        reps = min(reps * 2, 64)
    return 2.0 * m * k * n / best


class StubTask:
    """What M3PModel.build_model reads from a task: the dictionary and the region store's sizes."""

    def __init__(self, vocab, feat_dim=2048, num_classes=1600):
        from fairseq.data import Dictionary

        d = Dictionary()  # <s>=0 <pad>=1 </s>=2 <unk>=3, as XLM-R
        for i in range(vocab - len(d) - 1):
            d.add_symbol(f"w{i}")
        d.add_symbol("<mask>")
        self.dictionary = self.source_dictionary = self.target_dictionary = d
        self.region_feat_dim, self.num_region_classes = feat_dim, num_classes


def build_m3p(task, arch="m3p_base", **overrides):
    import m3p_fairseq  # noqa: F401  (registers the model)
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

    args = argparse.Namespace(arch=arch, tokens_per_sample=512, **overrides)
    ARCH_CONFIG_REGISTRY[arch](args)  # the architecture's sizes, as fairseq-train applies them before building
    return ARCH_MODEL_REGISTRY[arch].build_model(args, task)


def m3p_dims(model):
    enc = model.encoder.sentence_encoder
    layer = enc.layers[0]
    return {"layers": len(enc.layers), "dim": layer.embed_dim, "ffn": layer.fc1.out_features,
            "heads": layer.self_attn.num_heads}


def encoder_train_flops(dims, batch, text_len, regions, masked, vocab, feat_dim):
    """FLOPs of one training step (forward + backward = 3 x forward) of the joint encoder with the
    masked-LM head on the masked tokens; matrix products only, as MFU is usually counted."""
    d, f, L = dims["dim"], dims["ffn"], dims["layers"]
    t = text_len + regions
    per_token_layer = 2 * (4 * d * d + 2 * d * f) + 2 * 2 * t * d  # projections + FFN, then QK^T and AV
    fwd = batch * t * L * per_token_layer
    fwd += batch * regions * 2 * (feat_dim + 5) * d  # region feature and box projections
    fwd += masked * 2 * (d * d + d * vocab)  # LM head: dense + output projection
    return 3 * fwd


def peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
