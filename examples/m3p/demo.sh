#!/usr/bin/env bash
# The demo: embedded world -> sentencepiece -> fairseq-preprocess -> fairseq-train (m3p_tiny, CPU)
# -> zero-shot retrieval per language -> demo-output/results.json. Each step is the command a
# user runs on real data (see examples/m3p/README.md).
set -euo pipefail
OUT=${OUT:-demo-output}
UPDATES=${UPDATES:-3000}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
rm -f "$OUT/results.json"
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

echo "== 1. the embedded world (regions in HDF5, captions in 6 languages, text in 10)" >&2
m3p-make-world "$OUT/world" --seed 1 --feat-dim 2048 --train-images 3000 --test-images 100

echo "== 2. sentencepiece + fairseq-preprocess" >&2
m3p-prepare-world "$OUT/world" "$OUT/data"

echo "== 3. pre-train the understanding model (xMLM, MMLM, MRM, VLM; one objective per update)" >&2
# Real runs start from XLM-R, whose attention already works. The tiny model here starts from
# nothing, and VLM sits at chance until the model finds the word-region match, which MMLM teaches:
# measured on this world, VLM left chance after ~1,100 updates at 1:3:1:3 (zero-shot en mR 43.5
# after 3,000) against ~2,100 at 1:1:1:4 (mR 29.0); 1:6:1:4 was still at chance at 1,400.
# xMLM reads one sentence per sample (--sample-break-mode eos) to keep CPU batches small.
rm -rf "$OUT/checkpoints"
fairseq-train "$OUT/data" --user-dir m3p_fairseq \
    --task multitask_multimodal --arch m3p_tiny --criterion m3p_pretrain \
    --objectives xmlm,mmlm,mrm,vlm --objective-ratios 1,3,1,3 --caption-langs en --sample-break-mode eos \
    --optimizer adam --adam-betas '(0.9,0.98)' --lr 1e-3 --clip-norm 1.0 \
    --lr-scheduler polynomial_decay --warmup-updates 100 --total-num-update "$UPDATES" --max-update "$UPDATES" \
    --batch-size 64 --cpu --num-workers 0 --seed 1 \
    --save-dir "$OUT/checkpoints" --no-epoch-checkpoints --disable-validation \
    --log-format simple --log-interval 100 --tensorboard-logdir "$OUT/tensorboard" 2>&1 \
    | tee "$OUT/train.log" | grep --line-buffered -E "train_inner|train \||done training|Error|error" >&2 || true
test -f "$OUT/checkpoints/checkpoint_last.pt" || { echo "training failed: see $OUT/train.log" >&2; exit 1; }

echo "== 4. zero-shot retrieval on the test images, every caption language" >&2
m3p-retrieval-eval "$OUT/data" --path "$OUT/checkpoints/checkpoint_last.pt" --split test \
    --langs en,de,fr,cs,ja,zh --results "$OUT/results.json" --key retrieval.zero_shot

# ---- the generation model (xDAE, IC, DIC) and captioning: steps 5-6 ------------------------------
GEN_UPDATES=${GEN_UPDATES:-1500}
CAPTION_LANGS=${CAPTION_LANGS:-en,de,fr,cs,ja,zh}

echo "== 5. pre-train the generation model (xDAE, IC, DIC; one objective per update)" >&2
# IC/DIC on the captions of every language (the paper fine-tunes captioning per language; here the
# short pre-training doubles as that fine-tuning). No prefetch thread (--data-buffer-size 0): an
# h5py read in it can deadlock the interpreter's exit.
rm -rf "$OUT/gen-checkpoints"
fairseq-train "$OUT/data" --user-dir m3p_fairseq \
    --task multitask_multimodal --arch m3p_seq2seq_tiny --criterion m3p_generation \
    --objectives xdae,ic,dic --objective-ratios 1,4,1 --caption-langs "$CAPTION_LANGS" \
    --optimizer adam --adam-betas '(0.9,0.98)' --lr 3e-3 --clip-norm 1.0 \
    --lr-scheduler inverse_sqrt --warmup-updates 150 --max-update "$GEN_UPDATES" \
    --batch-size 32 --cpu --num-workers 0 --data-buffer-size 0 --seed 1 \
    --save-dir "$OUT/gen-checkpoints" --no-epoch-checkpoints --disable-validation \
    --log-format json --log-interval 100 2>&1 \
    | tee "$OUT/gen-train.log" | grep --line-buffered -E "train_inner|done training|Error|error" >&2 || true
test -f "$OUT/gen-checkpoints/checkpoint_last.pt" || { echo "training failed: see $OUT/gen-train.log" >&2; exit 1; }

echo "== 6. caption the test images in every language (beam 10), BLEU-4 / CIDEr-D, objects named" >&2
mkdir -p "$OUT/captions"
for lang in ${CAPTION_LANGS//,/ }; do
    fairseq-generate "$OUT/data" --user-dir m3p_fairseq --task m3p_captioning \
        --path "$OUT/gen-checkpoints/checkpoint_last.pt" --gen-subset test --target-lang "$lang" \
        --beam 10 --batch-size 100 --post-process sentencepiece --cpu \
        > "$OUT/captions/gen.$lang.txt" 2> "$OUT/captions/gen.$lang.log"
    m3p-caption-score --hyp "$OUT/captions/gen.$lang.txt" --ref "$OUT/captions/gen.$lang.txt" --lang "$lang" \
        --results "$OUT/results.json" --key "captioning.$lang" > /dev/null
done
python examples/m3p/caption_objects.py --world "$OUT/world" --langs "$CAPTION_LANGS" \
    --gen "$OUT/captions/gen.{lang}.txt" --results "$OUT/results.json" > /dev/null

echo "== 7. fine-tune and evaluate the downstream tasks (retrieval, XNLI, MMT, NTG, captioning)" >&2
bash examples/m3p/demo_downstream.sh "$OUT" "$OUT/data" "$OUT/checkpoints/checkpoint_last.pt" \
    "$OUT/gen-checkpoints/checkpoint_last.pt"

echo "== 8. tables and pictures" >&2
m3p-results-table "$OUT/results.json" > "$OUT/results.md"
m3p-plots --results "$OUT/results.json" --train-log "$OUT/train.log" "$OUT/gen-train.log" --out "$OUT/plots" > /dev/null

echo "$OUT/results.json"
