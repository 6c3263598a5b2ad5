#!/usr/bin/env bash
# XNLI on the understanding model: fine-tune on English, accuracy on every language (the XNLI table).
#
#   examples/m3p/xnli.sh DATA PRETRAINED OUT [fairseq-train flags...]
#
# DATA has xnli/{lang}/{input0,input1,label} (m3p-import-dataset xnli, or the embedded world);
# OUT/results.json gets xnli.{lang}.acc. TRAIN_LANGS=en,de,... fine-tunes on several languages
# (translate-train); LANGS restricts the test languages (default: all under DATA/xnli). Validation: accuracy
# on the dev sets of the training languages (no target-language dev data, as zero-shot transfer wants).
# KEEP_OBJECTIVES (e.g. tcl, with translation pairs in DATA/parallel) keeps pre-training objectives on beside
# XNLI, one per update at KEEP_RATIOS (the xnli objective of multitask_multimodal): English XNLI that keeps the
# languages (validated by the xnli objective's accuracy on the training languages' dev sets).
set -euo pipefail
DATA=$1 PRETRAINED=$2 OUT=$3
shift 3
EXTRA=("$@")  # passed on to the fine-tuning run (e.g. --code-switch)
. "$(dirname "$0")/finetune_common.sh"
mkdir -p "$OUT"
TRAIN_LANGS=${TRAIN_LANGS:-en}
if [ -n "${KEEP_OBJECTIVES:-}" ]; then
    m3p_train_kept "$OUT/xnli" xnli_acc xnli m3p_pretrain "$ARCH" --train-langs "$TRAIN_LANGS" ${EXTRA[@]+"${EXTRA[@]}"}
else
    m3p_train "$OUT/xnli" accuracy --task m3p_xnli --criterion m3p_classification --arch "$ARCH" \
        --pretrained-checkpoint "$PRETRAINED" --train-langs "$TRAIN_LANGS" --valid-subset "valid.${TRAIN_LANGS//,/+}" \
        ${EXTRA[@]+"${EXTRA[@]}"}
fi
# the stock command works too: fairseq-validate DATA --user-dir m3p_fairseq --task m3p_xnli \
#     --path OUT/xnli/checkpoint_best.pt --valid-subset test.en,test.de --criterion m3p_classification
m3p-downstream-eval xnli "$DATA" --path "$(trained "$OUT/xnli")" ${LANGS:+--langs "$LANGS"} \
    --results "${RESULTS:-$OUT/results.json}" --key xnli $EVAL_CPU
