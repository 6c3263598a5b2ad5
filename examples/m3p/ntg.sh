#!/usr/bin/env bash
# News title generation (XGLUE NTG): fine-tune on English, BLEU-4 per language (the NTG table).
#
#   examples/m3p/ntg.sh DATA PRETRAINED_GEN OUT [fairseq-train flags...]
#
# DATA has ntg/{lang}/{src,tgt} (m3p-import-dataset ntg, or the embedded world);
# OUT/results.json gets ntg.{lang}.bleu4 and .right_language (the share of titles written in the language) for
# LANGS (default: every language under DATA/ntg). Validation: BLEU-4 on the dev sets of the training languages
# (beam VALID_BEAM), the best checkpoint by it. KEEP_OBJECTIVES (e.g. xdae) keeps pre-training objectives on
# beside NTG, one per update at KEEP_RATIOS (the ntg objective of multitask_multimodal; validated by its token
# accuracy on the training languages' dev sets).
set -euo pipefail
DATA=$1 PRETRAINED=$2 OUT=$3
shift 3
EXTRA=("$@")  # passed on to the fine-tuning run (e.g. --code-switch)
. "$(dirname "$0")/finetune_common.sh"
LANGS=${LANGS:-$(ls "$DATA/ntg" | paste -sd, -)}
mkdir -p "$OUT"
TRAIN_LANGS=${TRAIN_LANGS:-en}
if [ -n "${KEEP_OBJECTIVES:-}" ]; then
    m3p_train_kept "$OUT/ntg" ntg_acc ntg m3p_generation "$GEN_ARCH" --train-langs "$TRAIN_LANGS" ${EXTRA[@]+"${EXTRA[@]}"}
else
    m3p_train "$OUT/ntg" bleu --task m3p_ntg --criterion m3p_generation --arch "$GEN_ARCH" \
        --pretrained-checkpoint "$PRETRAINED" --train-langs "$TRAIN_LANGS" --valid-subset "valid.${TRAIN_LANGS//,/+}" \
        "${VALID_BLEU[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
fi
m3p-downstream-eval generate "$DATA" --path "$(trained "$OUT/ntg")" --targets "$LANGS" --beam "$BEAM" \
    --hyps-dir "$OUT/ntg" --results "${RESULTS:-$OUT/results.json}" --key ntg $EVAL_CPU
