#!/usr/bin/env bash
# The demo: embedded world -> sentencepiece -> fairseq-preprocess -> fairseq-train (m3p_tiny, CPU)
# -> zero-shot retrieval per language -> demo-output/results.json. Each step is the command a
# user runs on real data (see examples/m3p/README.md).
set -euo pipefail
OUT=${OUT:-demo-output}
UPDATES=${UPDATES:-2000}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
rm -f "$OUT/results.json"
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

echo "== 1. the embedded world (regions in HDF5, captions in 6 languages, text in 10)" >&2
m3p-make-world "$OUT/world" --seed 1 --feat-dim 2048 --train-images 3000 --test-images 100

echo "== 2. sentencepiece + fairseq-preprocess" >&2
m3p-prepare-world "$OUT/world" "$OUT/data"

echo "== 3. pre-train the understanding model (xMLM, MMLM, MRM, VLM; one objective per update)" >&2
rm -rf "$OUT/checkpoints"
fairseq-train "$OUT/data" --user-dir m3p_fairseq \
    --task multitask_multimodal --arch m3p_tiny --criterion m3p_pretrain \
    --objectives xmlm,mmlm,mrm,vlm --objective-ratios 1,1,1,3 --caption-langs en \
    --optimizer adam --adam-betas '(0.9,0.98)' --lr 5e-4 --clip-norm 1.0 \
    --lr-scheduler polynomial_decay --warmup-updates 100 --total-num-update "$UPDATES" --max-update "$UPDATES" \
    --batch-size 32 --cpu --num-workers 0 --seed 1 \
    --save-dir "$OUT/checkpoints" --no-epoch-checkpoints --disable-validation \
    --log-format tqdm --log-interval 50 --tensorboard-logdir "$OUT/tensorboard" 2>&1 \
    | tee "$OUT/train.log" | grep --line-buffered -E "train_inner|train \||done training|Error|error" >&2 || true
test -f "$OUT/checkpoints/checkpoint_last.pt" || { echo "training failed: see $OUT/train.log" >&2; exit 1; }

echo "== 4. zero-shot retrieval on the test images, every caption language" >&2
m3p-retrieval-eval "$OUT/data" --path "$OUT/checkpoints/checkpoint_last.pt" --split test \
    --langs en,de,fr,cs,ja,zh --results "$OUT/results.json" --key retrieval.zero_shot

echo "$OUT/results.json"
