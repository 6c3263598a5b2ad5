#!/usr/bin/env bash
# Multilingual image-text retrieval with the paper's fine-tuning strategies (Multi30K / MSCOCO tables:
# a column per language, a row per strategy), plus two-stage retrieval after fine-tuning on English.
#
#   examples/m3p/retrieval.sh STRATEGY DATA PRETRAINED OUT [fairseq-train flags...]
#
# STRATEGY  zero_shot       the pre-trained checkpoint as it is
#           zero_shot_code_switched  pre-training continued with code-switched English captions
#                           (--code-switch; OBJECTIVES / RATIOS, default xmlm,mmlm,mrm,vlm at 1,3,1,3),
#                           then zero-shot, no fine-tuning
#           finetune_en     fine-tune on English, test every language (+ retrieval.two_stage); with
#                           KEEP_OBJECTIVES (e.g. tcl), pre-training objectives kept on beside it, one per
#                           update (multitask_multimodal --objectives ret,KEEP_OBJECTIVES, KEEP_RATIOS)
#           code_switching  as finetune_en, English captions code-switched (--code-switch)
#           finetune_each   one fine-tuning per language, each tested on its own language
#           finetune_all    fine-tune on every language merged
# DATA      a data folder with captions/{lang} and regions/ (m3p-import-dataset, m3p-prepare-world)
# OUT       OUT/results.json gets retrieval.STRATEGY.{lang}; checkpoints go to OUT/retrieval_STRATEGY*
# Settings: examples/m3p/finetune_common.sh, plus LANGS (test languages), TRAIN_LANGS (finetune_all /
# finetune_each, default LANGS), MAX_IMAGES (test on the first N images), TOP_K (two-stage shortlist).
# Every run validates by mR on the dev images of its training languages (VALID_EVERY, VALID_IMAGES; the
# code-switched pre-training by zero-shot mR over LANGS) and is evaluated at its best checkpoint.
set -euo pipefail
STRATEGY=$1 DATA=$2 PRETRAINED=$3 OUT=$4
shift 4
EXTRA=("$@")  # passed on to every fine-tuning run (e.g. --contrastive-weight 0)
. "$(dirname "$0")/finetune_common.sh"
LANGS=${LANGS:-en,de,fr,cs,ja,zh}
TRAIN_LANGS=${TRAIN_LANGS:-$LANGS}
TOP_K=${TOP_K:-10}
mkdir -p "$OUT"
RESULTS=${RESULTS:-$OUT/results.json}
EVAL=("${EVAL_ENV[@]}" m3p-downstream-eval retrieval "$DATA" --results "$RESULTS" ${MAX_IMAGES:+--max-images "$MAX_IMAGES"}
      ${EVAL_BATCH:+--batch-size "$EVAL_BATCH"} $EVAL_CPU)

finetune() {  # finetune NAME CAPTION_LANGS [flags]
    local name=$1 langs=$2; shift 2
    m3p_train "$OUT/retrieval_$name" mR --task m3p_retrieval --criterion m3p_retrieval --arch "$ARCH" \
        --pretrained-checkpoint "$PRETRAINED" --caption-langs "$langs" --num-negatives 3 \
        --valid-retrieval-images "$VALID_IMAGES" "$@" ${EXTRA[@]+"${EXTRA[@]}"}
}

case "$STRATEGY" in
  zero_shot)
    "${EVAL[@]}" --path "$PRETRAINED" --langs "$LANGS" --key retrieval.zero_shot ;;
  zero_shot_code_switched)
    m3p_train "$OUT/pretrain_cs" mR --task multitask_multimodal --criterion m3p_pretrain --arch "$ARCH" \
        --objectives "${OBJECTIVES:-xmlm,mmlm,mrm,vlm}" --objective-ratios "${RATIOS:-1,3,1,3}" --caption-langs en \
        --sample-break-mode eos --code-switch --restore-file "$PRETRAINED" --reset-optimizer --reset-dataloader \
        --reset-meters --reset-lr-scheduler --valid-retrieval-langs "$LANGS" --valid-retrieval-images "$VALID_IMAGES" \
        ${EXTRA[@]+"${EXTRA[@]}"}
    "${EVAL[@]}" --path "$(trained "$OUT/pretrain_cs")" --langs "$LANGS" --key retrieval.zero_shot_code_switched ;;
  finetune_en)
    if [ -n "${KEEP_OBJECTIVES:-}" ]; then
        # retrieval fine-tuning as the objective ret, beside what keeps the languages aligned (TCL on
        # translation pairs): the image-caption pairs are still English only
        m3p_train_kept "$OUT/retrieval_en" mR ret m3p_pretrain "$ARCH" --caption-langs en --num-negatives 3 \
            --valid-retrieval-langs en --valid-retrieval-images "$VALID_IMAGES" ${EXTRA[@]+"${EXTRA[@]}"}
    else
        finetune en en
    fi
    "${EVAL[@]}" --path "$(trained "$OUT/retrieval_en")" --langs "$LANGS" --key retrieval.finetune_en
    "${EVAL[@]}" --path "$(trained "$OUT/retrieval_en")" --langs "${TWO_STAGE_LANGS:-en}" --two-stage \
        --top-k "$TOP_K" ${COMPARE_FULL:+--compare-full} --key retrieval.two_stage ;;
  code_switching)
    finetune cs en --code-switch
    "${EVAL[@]}" --path "$(trained "$OUT/retrieval_cs")" --langs "$LANGS" --key retrieval.code_switching ;;
  finetune_each)
    for lang in ${TRAIN_LANGS//,/ }; do
        finetune "each_$lang" "$lang"
        "${EVAL[@]}" --path "$(trained "$OUT/retrieval_each_$lang")" --langs "$lang" --key retrieval.finetune_each
    done ;;
  finetune_all)
    finetune all "$TRAIN_LANGS"
    "${EVAL[@]}" --path "$(trained "$OUT/retrieval_all")" --langs "$LANGS" --key retrieval.finetune_all ;;
  *) echo "retrieval.sh: unknown strategy $STRATEGY (zero_shot, zero_shot_code_switched, finetune_en, code_switching," \
          "finetune_each, finetune_all)" >&2
     exit 2 ;;
esac
