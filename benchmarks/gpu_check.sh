#!/usr/bin/env bash
# GPU check of M3P pre-training through fairseq's mixed-precision optimizers: m3p_base, the four
# understanding objectives, a few hundred updates in fp16 (FP16Optimizer, dynamic loss scale) and in
# bf16 (the plugin turns fairseq-train's --bf16 back from --tpu), on a generated world with 2048-d
# regions. Prints one JSON line per run: loss, loss scale (fp16), tokens/s, MFU. Under 8 minutes on
# one recent GPU at the defaults.
#
#   bash benchmarks/gpu_check.sh                  # needs a CUDA build of torch with fairseq installed
#   PYTHON=/path/to/python UPDATES=300 bash benchmarks/gpu_check.sh
#
# The same script runs on a CPU as a dry run of its plumbing (tiny model, a few updates):
#   ARCH=m3p_tiny UPDATES=30 BATCH=8 FP16=--memory-efficient-fp16 EXTRA=--cpu bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo "$ROOT/.venv/bin/python" || echo python )}
case $PYTHON in */*) PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON") ;; esac  # we cd below
UPDATES=${UPDATES:-300}
BATCH=${BATCH:-32}
ARCH=${ARCH:-m3p_base}
FP16=${FP16:---fp16}             # fairseq's FP16Optimizer (flat fp32 master copy); apex is used when present
EXTRA=${EXTRA:-}
OUT=${OUT:-$(mktemp -d /tmp/m3p-gpu-check.XXXXXX)}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

if [[ " $EXTRA " != *" --cpu "* ]]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device (torch ' + torch.__version__ + '); see the CPU dry run in this script')"
fi

# 2048-d regions, 36 per image, built once and reused (benchmarks/_world.py)
DATA=$(cd benchmarks && "$PYTHON" -c "from _world import bench_data; print(bench_data('$OUT/world', train_images=400))" | tail -1)
VOCAB=$(( $(wc -l < "$DATA/dict.txt") + 5 ))   # + <s> <pad> </s> <unk> <mask>

for PREC in "$FP16" --bf16; do
  NAME=${PREC#--}
  echo "== $NAME: $ARCH, $UPDATES updates, batch $BATCH" >&2
  # lr warm-up as the paper's; log every update (gpu_report reads each one)
  "$PYTHON" -m fairseq_cli.train "$DATA" --user-dir "$ROOT/m3p_fairseq" \
      --task multitask_multimodal --arch "$ARCH" --criterion m3p_pretrain --objective-ratios 1,1,1,1 \
      --optimizer adam --adam-betas '(0.9,0.98)' --lr 1e-4 --lr-scheduler polynomial_decay \
      --warmup-updates $(( UPDATES / 6 )) --total-num-update "$UPDATES" --max-update "$UPDATES" \
      --batch-size "$BATCH" --num-workers 2 --seed 1 --save-dir "$OUT/ck-$NAME" --no-save \
      --disable-validation --log-format json --log-interval 1 $PREC $EXTRA > "$OUT/$NAME.log" 2>&1 \
    || { tail -30 "$OUT/$NAME.log" >&2; echo "gpu_check: $NAME run failed (log: $OUT/$NAME.log)" >&2; exit 1; }
done

DIMS=$(cd benchmarks && "$PYTHON" -c "
import argparse, m3p_fairseq
from fairseq.models import ARCH_CONFIG_REGISTRY
a = argparse.Namespace(); ARCH_CONFIG_REGISTRY['$ARCH'](a)
print(f'--dim {a.encoder_embed_dim} --ffn {a.encoder_ffn_embed_dim} --layers {a.encoder_layers}')" | tail -1)
cd benchmarks
"$PYTHON" gpu_report.py "${FP16#--}=$OUT/${FP16#--}.log" "bf16=$OUT/bf16.log" --vocab "$VOCAB" --regions 36 \
    --warmup $(( UPDATES / 15 > 2 ? UPDATES / 15 : 2 )) $DIMS
echo "logs: $OUT" >&2
