"""Reads the json logs of gpu_check.sh's fairseq-train runs (--log-interval 1) and prints one JSON line
per run: loss at the start and end, the fp16 loss scale (lowest, last, overflows after warm-up),
tokens/s and MFU against the GPU's measured dense GEMM rate in that precision, and peak memory
(fairseq logs ``gb_free`` = the GPU's memory less torch's peak allocation).

Tokens are joint positions: text tokens (fairseq's wpb) plus, for the image objectives, the
regions of every image (the objective of each update is in the log as ``{objective}_batches``).
FLOPs are the matrix products of the encoder and the masked-LM head, 3 x forward.
"""
import argparse
import json
import math
import statistics

import torch

from _common import gemm_rate

IMAGE_OBJECTIVES = ("mmlm", "mrm", "vlm")


def updates(path):
    recs = []
    with open(path, errors="replace") as f:
        for line in f:
            if "| train_inner |" in line and "{" in line:
                recs.append(json.loads(line[line.index("{"):]))
    return recs


def objective_of(rec):
    for o in ("xmlm",) + IMAGE_OBJECTIVES:
        if float(rec.get(f"{o}_batches") or 0) > 0:
            return o
    return None


def update_flops(rec, regions, d, f, layers, vocab, feat_dim):
    obj = objective_of(rec)
    bsz, text = float(rec["bsz"]), float(rec["wpb"])
    img = bsz * regions if obj in IMAGE_OBJECTIVES else 0.0
    pos = text + img
    per_seq = pos / max(bsz, 1.0)
    fwd = layers * (pos * 2 * (4 * d * d + 2 * d * f) + 4 * pos * per_seq * d)
    fwd += img * 2 * (feat_dim + 5) * d
    if obj in ("xmlm", "mmlm"):
        fwd += 0.15 * text * 2 * (d * d + d * vocab)
    return pos, 3 * fwd


def report(path, precision, peak, a):
    recs = updates(path)
    if not recs:
        return {"run": precision, "log": path, "error": "no train_inner records"}
    losses = [float(r["loss"]) for r in recs]
    body = recs[a.warmup:] if len(recs) > a.warmup + 5 else recs
    pos = flops = secs = 0.0
    for r in body:
        p, fl = update_flops(r, a.regions, a.dim, a.ffn, a.layers, a.vocab, a.feat_dim)
        ups = float(r.get("ups") or 0)
        if ups <= 0:
            continue
        pos, flops, secs = pos + p, flops + fl, secs + 1.0 / ups
    out = {"run": precision, "updates": len(recs),
           "loss_first10": round(statistics.mean(losses[:10]), 3), "loss_last10": round(statistics.mean(losses[-10:]), 3),
           "loss_finite": all(math.isfinite(x) for x in losses),
           "tokens_per_s": round(pos / secs, 1) if secs else None,
           "text_tokens_per_s": round(statistics.median(float(r["wps"]) for r in body), 1),
           "peak_gemm_tflops": round(peak / 1e12, 2),
           "mfu": round(flops / secs / peak, 3) if secs else None}
    free = [float(r["gb_free"]) for r in recs if r.get("gb_free") not in (None, "")]
    if free and torch.cuda.is_available():
        out["peak_mem_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30 - min(free), 2)
    scales = [float(r["loss_scale"]) for r in recs if r.get("loss_scale") not in (None, "")]
    if scales:
        later = scales[a.warmup:]
        drops = sum(1 for x, y in zip(later, later[1:]) if y < x)
        out.update({"loss_scale_min": min(scales), "loss_scale_last": scales[-1],
                    "loss_scale_drops_after_warmup": drops,
                    # a scale that keeps halving means overflowing gradients (fp16 range trouble)
                    "loss_scale_stable": drops <= a.max_drops and scales[-1] >= 1.0})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="PRECISION=LOG, e.g. fp16=out/fp16.log")
    p.add_argument("--regions", type=int, default=36)
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--ffn", type=int, default=3072)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--feat-dim", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=20, help="updates left out of speed and loss-scale checks")
    p.add_argument("--max-drops", type=int, default=3)
    a = p.parse_args()
    cuda = torch.cuda.is_available()
    for run in a.runs:
        precision, path = run.split("=", 1)
        if cuda:
            dtype = torch.bfloat16 if precision.endswith("bf16") else torch.float16
            peak = gemm_rate(8192, 8192, 8192, dtype=dtype, device="cuda")
        else:  # a dry run of the script on a CPU: its fp32 rate
            peak = gemm_rate(1024, a.dim, a.ffn)
        print(json.dumps({"benchmark": "gpu_check", "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                          **report(path, precision, peak, a)}), flush=True)


if __name__ == "__main__":
    main()
