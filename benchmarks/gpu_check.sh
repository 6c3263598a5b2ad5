#!/usr/bin/env bash
# GPU check of M3P pre-training through fairseq's mixed-precision optimizers: m3p_base, the four
# understanding objectives, a few hundred updates in fp16 (FP16Optimizer, dynamic loss scale) and in
# bf16 (the plugin turns fairseq-train's --bf16 back from --tpu), on a generated world with 2048-d
# regions. First, the training step alone (benchmarks/train_step.py: no data loader, M3P side by side
# with HF's XLMRobertaModel at the paper's shape, 250,002-piece vocabulary) in bf16 and fp16. Prints
# one JSON line per run: tokens/s, MFU, peak memory; for fairseq-train also loss and loss scale (fp16).
# Then M3P-large (m3p_large, XLM-R large's 24 x 1024): the step in bf16 beside HF's (tokens/s, MFU, peak
# memory), the peak memory of fairseq-train at the paper's shape without and with --checkpoint-activations,
# and a few updates with --ddp-backend fully_sharded (fairseq's FSDP through fairscale; it needs CUDA).
# Under 8 minutes on one recent GPU at the defaults (about 6 on an H100-class GPU by estimate).
#
#   bash benchmarks/gpu_check.sh                  # needs a CUDA build of torch with fairseq installed
#   PYTHON=/path/to/python UPDATES=300 bash benchmarks/gpu_check.sh
#
# The same script runs on a CPU as a dry run of its plumbing (tiny model, a few updates):
#   ARCH=m3p_tiny UPDATES=30 BATCH=8 FP16=--memory-efficient-fp16 EXTRA=--cpu LARGE=m3p_tiny LARGE_BATCH=2 \
#     bash benchmarks/gpu_check.sh
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
STEP_BATCH=${STEP_BATCH:-64}     # train_step.py's batch at the paper's shape (128 tokens + 36 regions)
STEP_STEPS=${STEP_STEPS:-10}
LARGE=${LARGE:-m3p_large}        # the large section's architecture (LARGE= skips it)
LARGE_BATCH=${LARGE_BATCH:-32}   # its batch at the paper's shape (step, memory)
FSDP_UPDATES=${FSDP_UPDATES:-20}
OUT=${OUT:-$(mktemp -d /tmp/m3p-gpu-check.XXXXXX)}  # logs and gpu_check.jsonl (the device tool's $OUT comes back)
WORK=${WORK:-/tmp/m3p-gpu-work}                       # the benchmark world, reused between runs
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

# A bare GPU machine (a CUDA torch, no fairseq): install what benchmarks/gpu_wheels.sh put in .whl/ into
# $SITE, and compile fairseq's two Cython modules in its source tree (about a minute on 16 cores).
if ! "$PYTHON" -c "import fairseq, hydra, omegaconf" 2>/dev/null; then
  [ -d .whl ] || { echo "gpu_check: $PYTHON has no fairseq and there is no .whl/: run benchmarks/gpu_wheels.sh" \
                        "where PyPI is reachable, then carry .whl" >&2; exit 1; }
  SITE=${SITE:-/tmp/m3p-site}
  echo "== installing fairseq and its configuration packages from .whl into $SITE" >&2
  rm -rf "$SITE" && mkdir -p "$SITE/src"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
  tar -xzf .whl/fairseq_fixed-*.tar.gz -C "$SITE/src"
  FAIRSEQ_SRC=$(echo "$SITE"/src/fairseq_fixed-*)
  (cd "$FAIRSEQ_SRC" && "$PYTHON" - <<'PY'
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

# the modules fairseq's data pipeline needs (batch_by_size, TokenBlockDataset), as its setup.py builds them
mods = ["data_utils_fast", "token_block_utils_fast"]
exts = [Extension(f"fairseq.data.{m}", [f"fairseq/data/{m}.pyx"], language="c++", include_dirs=[numpy.get_include()],
                  extra_compile_args=["-std=c++11", "-O3"]) for m in mods]
setup(name="fairseq-cython", ext_modules=cythonize(exts, quiet=True), script_args=["build_ext", "--inplace", "-q"])
PY
  ) > "$SITE/build.log" 2>&1 || { tail -20 "$SITE/build.log" >&2; echo "gpu_check: building fairseq's Cython modules failed" >&2; exit 1; }
  export PYTHONPATH=$PYTHONPATH:$SITE:$FAIRSEQ_SRC
fi

if [[ " $EXTRA " != *" --cpu "* ]]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device (torch ' + torch.__version__ + '); see the CPU dry run in this script')"
fi

# the step alone, both precisions (a CPU dry run: the demo's shape, fp32, one step)
if [[ " $EXTRA " != *" --cpu "* ]]; then
  STEP_RUNS=("--preset paper --batch $STEP_BATCH --steps $STEP_STEPS --device cuda --dtype bf16"
             "--preset paper --batch $STEP_BATCH --steps $STEP_STEPS --device cuda --dtype fp16")
else
  STEP_RUNS=("--preset demo --steps 1 --device cpu --dtype fp32")
fi
for RUN in "${STEP_RUNS[@]}"; do
  echo "== train_step.py $RUN" >&2
  (cd benchmarks && "$PYTHON" train_step.py $RUN) 2> "$OUT/train_step.err" | tee -a "$OUT/gpu_check.jsonl" \
    || { tail -20 "$OUT/train_step.err" >&2; echo "gpu_check: train_step.py $RUN failed" >&2; exit 1; }
done

# 2048-d regions, 36 per image, built once and reused (benchmarks/_world.py)
DATA=$(cd benchmarks && "$PYTHON" -c "from _world import bench_data; print(bench_data('$WORK/world', train_images=400))" | tail -1)
VOCAB=$(( $(wc -l < "$DATA/dict.txt") + 5 ))   # + <s> <pad> </s> <unk> <mask>

for PREC in "$FP16" --bf16; do
  NAME=${PREC#--}
  echo "== $NAME: $ARCH, $UPDATES updates, batch $BATCH" >&2
  # lr warm-up as the paper's; log every update (gpu_report reads each one)
  "$PYTHON" -m fairseq_cli.train "$DATA" --user-dir "$ROOT/m3p_fairseq" \
      --task multitask_multimodal --arch "$ARCH" --criterion m3p_pretrain --objective-ratios 1,1,1,1 \
      --optimizer adam --adam-betas '(0.9,0.98)' --lr 1e-4 --lr-scheduler polynomial_decay \
      --warmup-updates $(( UPDATES / 6 )) --total-num-update "$UPDATES" --max-update "$UPDATES" \
      --batch-size "$BATCH" --num-workers 2 --seed 1 --save-dir "$WORK/ck-$NAME" --no-save \
      --disable-validation --log-format json --log-interval 1 $PREC $EXTRA > "$OUT/$NAME.log" 2>&1 \
    || { tail -30 "$OUT/$NAME.log" >&2; echo "gpu_check: $NAME run failed (log: $OUT/$NAME.log)" >&2; exit 1; }
done

arch_dims() {  # gpu_report.py's size flags of an architecture
  (cd benchmarks && "$PYTHON" -c "
import argparse, m3p_fairseq
from fairseq.models import ARCH_CONFIG_REGISTRY
a = argparse.Namespace(); ARCH_CONFIG_REGISTRY['$1'](a)
print(f'--dim {a.encoder_embed_dim} --ffn {a.encoder_ffn_embed_dim} --layers {a.encoder_layers}')" | tail -1)
}
DIMS=$(arch_dims "$ARCH")
(cd benchmarks && "$PYTHON" gpu_report.py "${FP16#--}=$OUT/${FP16#--}.log" "bf16=$OUT/bf16.log" --vocab "$VOCAB" \
    --regions 36 --warmup $(( UPDATES / 15 > 2 ? UPDATES / 15 : 2 )) $DIMS | tee -a "$OUT/gpu_check.jsonl")

if [ -n "$LARGE" ]; then
  if [[ " $EXTRA " != *" --cpu "* ]]; then
    LARGE_STEP="--preset paper --arch $LARGE --batch $LARGE_BATCH --steps $STEP_STEPS --device cuda --dtype bf16"
    MEM_PREC=--bf16
  else  # the dry run: the demo's shape, fp32; the precision runs on a CPU too
    LARGE_STEP="--preset demo --arch $LARGE --batch 4 --steps 1 --device cpu --dtype fp32"
    MEM_PREC=--memory-efficient-bf16
  fi
  echo "== train_step.py $LARGE_STEP" >&2
  (cd benchmarks && "$PYTHON" train_step.py $LARGE_STEP --contestants m3p hf) 2> "$OUT/train_step_large.err" \
    | tee -a "$OUT/gpu_check.jsonl" \
    || { tail -20 "$OUT/train_step_large.err" >&2; echo "gpu_check: train_step.py $LARGE_STEP failed" >&2; exit 1; }
  # peak memory of fairseq-train at the paper's shape (MMLM: 128 tokens + 36 regions), without and with checkpointing
  for CKPT in "" --checkpoint-activations; do
    echo "== memory.py $LARGE $MEM_PREC $CKPT" >&2
    (cd benchmarks && "$PYTHON" memory.py --arch "$LARGE" --batch "$LARGE_BATCH" --data "$WORK/world-long" \
        -- $MEM_PREC $CKPT $EXTRA) 2> "$OUT/memory_large.err" | grep '^{' | tee -a "$OUT/gpu_check.jsonl" \
      || { tail -20 "$OUT/memory_large.err" >&2; echo "gpu_check: memory.py $LARGE $CKPT failed" >&2; exit 1; }
  done
  # fairseq's FSDP (fairscale's FullyShardedDataParallel): CUDA only (its default device and streams are
  # CUDA's; on a CPU it stops at "Torch not compiled with CUDA enabled"). One process: fairseq shards over
  # a group of one, which still runs FSDP's flattening, all-gathers and mixed precision.
  if [[ " $EXTRA " != *" --cpu "* ]]; then
    echo "== fully_sharded: $LARGE, $FSDP_UPDATES updates, --fp16 --checkpoint-activations" >&2
    if "$PYTHON" -m fairseq_cli.train "$DATA" --user-dir "$ROOT/m3p_fairseq" \
        --task multitask_multimodal --arch "$LARGE" --criterion m3p_pretrain --objective-ratios 1,1,1,1 \
        --ddp-backend fully_sharded --fp16 --checkpoint-activations \
        --optimizer adam --lr 1e-4 --max-update "$FSDP_UPDATES" --batch-size "$BATCH" --num-workers 2 --seed 1 \
        --save-dir "$WORK/ck-fsdp" --save-interval-updates $(( FSDP_UPDATES / 2 )) --no-epoch-checkpoints \
        --disable-validation --log-format json --log-interval 1 > "$OUT/fsdp.log" 2>&1; then
      (cd benchmarks && "$PYTHON" gpu_report.py "fsdp_fp16=$OUT/fsdp.log" --vocab "$VOCAB" --regions 36 --warmup 2 \
          $(arch_dims "$LARGE")) | tee -a "$OUT/gpu_check.jsonl"
    else  # recorded, not fatal: the rest of the check stands
      "$PYTHON" -c 'import json, sys; print(json.dumps({"benchmark": "gpu_check", "run": "fsdp_fp16",
                                                         "error": sys.stdin.read().strip().splitlines()[-1:]}))' \
        < "$OUT/fsdp.log" | tee -a "$OUT/gpu_check.jsonl"
    fi
  fi
fi
echo "logs: $OUT" >&2
