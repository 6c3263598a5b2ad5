# Shared by the downstream scripts of examples/m3p (sourced, not run): settings and helpers.
# Every setting is an environment variable with the paper's value as default where the paper
# gives one; the demo (demo_downstream.sh) overrides them for its compact runs.
ARCH=${ARCH:-m3p_base}                 # understanding model; m3p_tiny for the embedded world
GEN_ARCH=${GEN_ARCH:-m3p_seq2seq_base} # generation model; m3p_seq2seq_tiny for the embedded world
LR=${LR:-5e-5}                         # paper: Adam (0.9, 0.98), lr 5e-5 for every fine-tuning
BATCH=${BATCH:-32}                     # per update and device; the paper's 512 = BATCH x UPDATE_FREQ x GPUs
UPDATE_FREQ=${UPDATE_FREQ:-1}
UPDATES=${UPDATES:-20000}
WARMUP=${WARMUP:-$(( UPDATES / 10 ))}
SCHEDULER=${SCHEDULER:-polynomial_decay}  # linear warm-up then decay to 0; "fixed": constant after warm-up
CLIP_NORM=${CLIP_NORM:-1.0}            # gradient clipping (0: none)
REGION_CACHE_MB=${REGION_CACHE_MB:-0}  # images kept in memory per run (--region-cache-mb); 0: read each time
BEAM=${BEAM:-10}                       # paper: beam 10 for captions
THREADS=${THREADS:-}
if [ -n "$THREADS" ]; then export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS; fi
# --cpu where there is no GPU (fairseq would look for CUDA otherwise)
DEVICE=${DEVICE:-$(command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo "" || echo --cpu)}
EVAL_DEVICE=${EVAL_DEVICE:-$DEVICE}
EVAL_CPU=$([ "$EVAL_DEVICE" = --cpu ] && echo --cpu || true)  # m3p-downstream-eval's spelling
EVAL_THREADS=${EVAL_THREADS:-$THREADS}  # threads of the evaluation runs (the demo's longest lane: 2, as it ends alone)
EVAL_ENV=(env ${EVAL_THREADS:+OMP_NUM_THREADS=$EVAL_THREADS MKL_NUM_THREADS=$EVAL_THREADS})
# Validation on the dev split every VALID_EVERY updates (and at the end), by the task's own metric; the
# evaluation then reads checkpoint_best.pt, the best on dev. 0: no validation, checkpoint_last.pt.
VALID_EVERY=${VALID_EVERY:-$(( UPDATES / 5 ))}
VALID_IMAGES=${VALID_IMAGES:-100}      # retrieval validation ranks the first N dev images (--valid-retrieval-images)
VALID_BEAM=${VALID_BEAM:-$BEAM}        # beam of the generation tasks' validation (BLEU-4)
VALID_BLEU=(--eval-bleu --eval-bleu-args "{\"beam\": $VALID_BEAM, \"max_len_b\": 60}")  # m3p-downstream-eval's

# validation_flags METRIC: fairseq's, to validate every VALID_EVERY updates (not at epoch ends) and keep
# checkpoint_best.pt by METRIC (higher is better), or none without validation
validation_flags() {
    if [ "$VALID_EVERY" -gt 0 ]; then
        echo --save-interval-updates "$VALID_EVERY" --keep-interval-updates 1 --validate-interval 1000000 \
             --save-interval 1000000 --best-checkpoint-metric "$1" --maximize-best-checkpoint-metric
    else
        echo --disable-validation
    fi
}

# trained SAVE_DIR: the checkpoint of a run to evaluate (the best on dev when it validated)
trained() { if [ "$VALID_EVERY" -gt 0 ]; then echo "$1/checkpoint_best.pt"; else echo "$1/checkpoint_last.pt"; fi; }

# m3p_train SAVE_DIR METRIC [fairseq-train flags...]: one fine-tuning run with the shared optimizer settings,
# validated by METRIC (mR, accuracy, bleu: the names validation logs). No prefetch thread
# (--data-buffer-size 0): an HDF5 read in it can hang the interpreter's exit.
m3p_train() {
    local save=$1 metric=$2; shift 2
    rm -rf "$save"
    fairseq-train "$DATA" --user-dir m3p_fairseq \
        --optimizer adam --adam-betas '(0.9,0.98)' --lr "$LR" --clip-norm "$CLIP_NORM" \
        --lr-scheduler "$SCHEDULER" --warmup-updates "$WARMUP" \
        $([ "$SCHEDULER" = polynomial_decay ] && echo --total-num-update "$UPDATES" || true) \
        --max-update "$UPDATES" --batch-size "$BATCH" --update-freq "$UPDATE_FREQ" $DEVICE --num-workers 0 \
        --data-buffer-size 0 --region-cache-mb "$REGION_CACHE_MB" \
        --seed "${SEED:-1}" --save-dir "$save" --no-epoch-checkpoints $(validation_flags "$metric") \
        --log-format simple --log-interval "${LOG_INTERVAL:-100}" "$@" > "$save.log" 2>&1 \
        || { echo "fairseq-train failed: see $save.log" >&2; tail -n 3 "$save.log" >&2; return 1; }
    grep -E "train \| epoch" "$save.log" | tail -n 1 | cut -c1-200 >&2 || true
    grep -E "\| valid[^|]* \| " "$save.log" | tail -n 1 | grep -oE "best_$metric [0-9.]+" >&2 || true
}

# m3p_train_kept SAVE_DIR METRIC OBJECTIVE CRITERION ARCH [flags...]: fine-tuning as the objective OBJECTIVE (ret,
# xnli, ntg) beside the pre-training objectives $KEEP_OBJECTIVES (e.g. tcl; xdae for the generation model), one
# objective per update at $KEEP_RATIOS, from $PRETRAINED (fairseq's --finetune-from-model), validated by METRIC:
# the task's data stays English-only, the kept objectives keep the other languages where pre-training put them.
m3p_train_kept() {
    local save=$1 metric=$2 objective=$3 criterion=$4 arch=$5; shift 5
    m3p_train "$save" "$metric" --task multitask_multimodal --criterion "$criterion" --arch "$arch" \
        --objectives "$objective,$KEEP_OBJECTIVES" ${KEEP_RATIOS:+--objective-ratios "$KEEP_RATIOS"} \
        --sample-break-mode eos --finetune-from-model "$PRETRAINED" "$@"
}
