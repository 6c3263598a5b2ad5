#!/usr/bin/env bash
# IGLUE (Bugliarello et al., ICML 2022) with M3P: IGLUE's protocols as commands, numbers into a results JSON.
#
#   examples/m3p/iglue.sh TASK MODE DATA CHECKPOINT OUT [fairseq-train flags...]
#
# TASK  xvnli | xgqa | marvl | xflickrco | wit; DATA is the task's folder (m3p-import-iglue writes it)
# MODE  finetune       CHECKPOINT: pre-trained M3P. Fine-tune on English (train.en), keep the checkpoint that scores
#                      best on English dev (valid.en) by the task's metric: accuracy; for retrieval mean recall mR
#                      (override with BEST_METRIC). -> OUT/TASK/checkpoint_best.pt, tested on test.en -> iglue.TASK.en
#       zeroshot       CHECKPOINT: the English fine-tuned model. test.{lang} for each of LANGS (default: every
#                      language with a test split) -> iglue.TASK.{lang}, IGLUE's avg over the non-English languages,
#                      the chance level (xGQA: the majority answer's)
#       fewshot        CHECKPOINT: the English fine-tuned model. For each language of LANGS with shot files and each
#                      of SHOTS (default: the language's train_{shots} splits): FEWSHOT_EPOCHS (IGLUE: 20) epochs on
#                      train_{shots}.{lang} at each learning rate of LRS (IGLUE: 1e-4 5e-5 1e-5); the rate whose run
#                      ends with the best validation (IGLUE's validation sets: English dev for xvnli, marvl (30
#                      batches), xflickrco (260 batches); the language's own dev for xgqa) is tested on test.{lang}
#                      -> iglue_few_shot.TASK.{shots}.{lang} (with its lr)
#       translatetest  CHECKPOINT: the English fine-tuned model. test_mt.{lang}, the test set machine-translated into
#                      English -> iglue_translate_test.TASK.{lang}
# KEEP_OBJECTIVES (e.g. tcl, with translation pairs in DATA/parallel): finetune keeps these pre-training objectives on
# beside the task, one objective per update at KEEP_RATIOS (the task first; multitask_multimodal with the task as an
# objective: xvnli, xgqa, marvl, or ret for retrieval), the training data still English only; UPDATES then counts the
# updates of every objective, and the checkpoint is chosen by the task objective's accuracy on English dev
# (TASK_acc; retrieval: ret_vlm_acc). Few-shot runs train the task alone.
# Settings (environment): finetune_common.sh's (ARCH, LR, BATCH, UPDATE_FREQ, UPDATES, WARMUP, THREADS, ...), with
# IGLUE's M3P values as the defaults of each task (lr; batch = BATCH x UPDATE_FREQ; EPOCHS, from which UPDATES is
# computed over the English training set; AdamW betas (0.9, 0.999), eps 1e-6, weight decay 1e-4, 10% warm-up, clip
# 1.0); VALID_EVERY (updates between validations, finetune_common.sh's); TEST_LANGS (the languages finetune tests
# its checkpoint on; default en; more: the zeroshot mode's numbers without a second process); FEWSHOT_BATCH (IGLUE:
# 16, MaRVL and xFlickr&CO 2); RESULTS (default OUT/results.json); EVAL_BATCH (pairs per scoring batch).
set -euo pipefail
TASK=$1 MODE=$2 DATA=$3 CHECKPOINT=$4 OUT=$5
shift 5
EXTRA=("$@")
case "$TASK" in  # IGLUE's M3P settings (e-bug/iglue: volta/config_tasks, experiments/*/m3p)
  xvnli)     : "${LR:=2e-5}" "${BATCH:=16}" "${UPDATE_FREQ:=8}" "${EPOCHS:=10}" "${FEWSHOT_BATCH:=16}" ;;
  xgqa)      : "${LR:=4e-5}" "${BATCH:=32}" "${UPDATE_FREQ:=8}" "${EPOCHS:=5}" "${FEWSHOT_BATCH:=16}" ;;
  marvl)     : "${LR:=1e-5}" "${BATCH:=16}" "${UPDATE_FREQ:=4}" "${EPOCHS:=20}" "${FEWSHOT_BATCH:=2}" ;;
  xflickrco) : "${LR:=2e-5}" "${BATCH:=8}" "${UPDATE_FREQ:=8}" "${EPOCHS:=10}" "${FEWSHOT_BATCH:=2}" ;;
  wit)       : "${LR:=2e-5}" "${BATCH:=8}" "${UPDATE_FREQ:=8}" "${EPOCHS:=2}" "${FEWSHOT_BATCH:=2}" ;;
  *) echo "iglue.sh: unknown task $TASK (xvnli, xgqa, marvl, xflickrco, wit)" >&2; exit 2 ;;
esac
KEEP_OBJECTIVES=${KEEP_OBJECTIVES:-}
case "$TASK" in
  xflickrco|wit)
    RETRIEVAL=1 METRIC=${BEST_METRIC:-mR} OBJECTIVE=ret
    TASK_FLAGS=(--task m3p_retrieval --criterion m3p_retrieval --num-negatives 3)
    KEPT_FLAGS=(--caption-langs en --num-negatives 3 --valid-retrieval-langs en --valid-retrieval-images "${VALID_IMAGES:-100}")
    FOLDER=captions EXT=ids ;;
  *)
    RETRIEVAL=0 METRIC=${BEST_METRIC:-accuracy} OBJECTIVE=$TASK
    TASK_FLAGS=(--task "m3p_$TASK" --criterion m3p_iglue)
    KEPT_FLAGS=(--train-langs en)
    FOLDER=$TASK EXT=jsonl ;;
esac
lines() { cat "$DATA/$FOLDER/$1/$2.$EXT" 2>/dev/null | wc -l; }  # lines LANG SPLIT: its examples (retrieval: captions)
langs_with() {  # langs_with SPLIT_PATTERN: the languages that have such a split, comma-separated
    for f in "$DATA/$FOLDER"/*/$1.$EXT; do [ -e "$f" ] && basename "$(dirname "$f")"; done | sort -u | paste -sd, -
}
splits_of() {  # splits_of LANG PATTERN: the language's splits matching PATTERN, by number (train_1, train_5, ...)
    for f in "$DATA/$FOLDER/$1"/$2.$EXT; do [ -e "$f" ] && basename "$f" ".$EXT"; done | sort -t_ -k2,2n
}
updates_for() {  # updates_for EXAMPLES EPOCHS BATCH_PER_UPDATE
    echo $(( $2 * (($1 + $3 - 1) / $3) ))
}
N_TRAIN=$(lines en train)
if [ -z "${UPDATES:-}" ] && [ "$MODE" = finetune ]; then
    [ "$N_TRAIN" -gt 0 ] || { echo "iglue.sh: no English training split in $DATA" >&2; exit 1; }
    UPDATES=$(updates_for "$N_TRAIN" "$EPOCHS" $(( BATCH * UPDATE_FREQ )))
    if [ -n "$KEEP_OBJECTIVES" ] && [ -n "${KEEP_RATIOS:-}" ]; then  # the task's epochs, the kept objectives' share on top
        UPDATES=$(echo "$KEEP_RATIOS" | awk -F, -v u="$UPDATES" '{ s = 0; for (i = 1; i <= NF; i++) s += $i; print int(u * s / $1 + 0.5) }')
    fi
fi
. "$(dirname "$0")/finetune_common.sh"
IGLUE_OPTIM=(--adam-betas '(0.9,0.999)' --adam-eps 1e-6 --weight-decay 1e-4)  # after m3p_train's own: these win
mkdir -p "$OUT"
RESULTS=${RESULTS:-$OUT/results.json}
EVAL=("${EVAL_ENV[@]}" m3p-downstream-eval iglue "$TASK" "$DATA" --results "$RESULTS" ${EVAL_BATCH:+--batch-size "$EVAL_BATCH"}
      $EVAL_CPU)
validation() {  # validation SUBSET [MAX_STEPS]: the dev set m3p_train validates on (by METRIC, every VALID_EVERY)
    echo "--valid-subset $1" "${2:+--max-valid-steps $2}"
}

case "$MODE" in
  finetune)
    if [ -n "$KEEP_OBJECTIVES" ]; then
        # the task as the objective $OBJECTIVE of multitask_multimodal, beside the kept ones; validation on the
        # objectives' English dev (valid: --train-langs / --caption-langs en), chosen by the task objective's
        # accuracy (retrieval: recall on the English dev images)
        METRIC=${BEST_METRIC:-$([ $RETRIEVAL = 1 ] && echo mR || echo "${OBJECTIVE}_acc")}
        PRETRAINED=$CHECKPOINT m3p_train_kept "$OUT/$TASK" "$METRIC" "$OBJECTIVE" m3p_pretrain "$ARCH" \
            "${KEPT_FLAGS[@]}" $(validation valid) ${IGLUE_OPTIM[@]+"${IGLUE_OPTIM[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
    else
        m3p_train "$OUT/$TASK" "$METRIC" "${TASK_FLAGS[@]}" --arch "$ARCH" --pretrained-checkpoint "$CHECKPOINT" \
            --train-subset train.en $(validation valid.en) ${IGLUE_OPTIM[@]+"${IGLUE_OPTIM[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
    fi
    "${EVAL[@]}" --path "$(trained "$OUT/$TASK")" --langs "${TEST_LANGS:-en}" ;;
  zeroshot)
    "${EVAL[@]}" --path "$CHECKPOINT" --langs "${LANGS:-$(langs_with test)}" ;;
  translatetest)
    "${EVAL[@]}" --path "$CHECKPOINT" --split test_mt --langs "${LANGS:-$(langs_with test_mt)}" ;;
  fewshot)
    FEWSHOT_EPOCHS=${FEWSHOT_EPOCHS:-20}
    mkdir -p "$OUT/fewshot"
    case "$TASK" in marvl) CAP=30 ;; xflickrco|wit) CAP=260 ;; *) CAP= ;; esac
    for lang in $(echo "${LANGS:-$(langs_with 'train_*')}" | tr , ' '); do
        [ "$lang" = en ] && [ -z "${LANGS:-}" ] && continue  # IGLUE's few-shot numbers are for the other languages
        valid=valid.en; [ "$TASK" = xgqa ] && valid=valid.$lang
        for split in $([ -n "${SHOTS:-}" ] && printf 'train_%s ' ${SHOTS//,/ } || splits_of "$lang" 'train_*'); do
            shots=${split#train_} n=$(lines "$lang" "$split")
            [ "$n" -gt 0 ] || { echo "iglue.sh: no $split for $lang in $DATA" >&2; exit 1; }
            if [ $RETRIEVAL = 1 ] && [ "$(sort -u "$DATA/captions/$lang/$split.ids" | wc -l)" -lt 2 ]; then
                echo "$TASK $lang $shots shots: one image, no negative to draw: skipped" >&2; continue
            fi
            UPDATES=$(updates_for "$n" "$FEWSHOT_EPOCHS" "$FEWSHOT_BATCH") WARMUP=$(( UPDATES / 10 ))
            runs=()
            for lr in ${LRS:-1e-4 5e-5 1e-5}; do
                run="$OUT/fewshot/${TASK}_${lang}_${shots}_lr$lr"
                LR=$lr BATCH=$FEWSHOT_BATCH UPDATE_FREQ=1 \
                    m3p_train "$run" "$METRIC" "${TASK_FLAGS[@]}" --arch "$ARCH" --pretrained-checkpoint "$CHECKPOINT" \
                    --train-subset "$split.$lang" $(validation "$valid" "$CAP") ${IGLUE_OPTIM[@]+"${IGLUE_OPTIM[@]}"} \
                    ${EXTRA[@]+"${EXTRA[@]}"}
                runs+=("$run/checkpoint_last.pt")
            done
            best=$(python -m m3p_fairseq.evaluation.iglue best "${runs[@]}" | cut -f1)
            "${EVAL[@]}" --path "$best" --langs "$lang" --key "iglue_few_shot.$TASK.$shots"
            chosen=${best%/checkpoint_last.pt}; chosen=${chosen##*_lr}
            printf '{"iglue_few_shot": {"%s": {"%s": {"%s": {"lr": %s}}}}}\n' "$TASK" "$shots" "$lang" "$chosen" \
                > "$OUT/fewshot/lr.json"
            python -m m3p_fairseq.evaluation.results "$RESULTS" "$OUT/fewshot/lr.json"
        done
    done ;;
  *) echo "iglue.sh: unknown mode $MODE (finetune, zeroshot, fewshot, translatetest)" >&2; exit 2 ;;
esac
