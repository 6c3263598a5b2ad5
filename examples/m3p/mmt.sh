#!/usr/bin/env bash
# Multimodal machine translation (Multi30K): a caption and its image -> the caption in another
# language; BLEU-4 per direction (the MMT table). One model for every direction of DIRECTIONS.
#
#   examples/m3p/mmt.sh DATA PRETRAINED_GEN OUT
#
# DATA has parallel captions/{lang}/{split} (the same image on the same line, as Multi30K);
# PRETRAINED_GEN is a generation-model checkpoint; OUT/results.json gets mmt.{src-tgt}.bleu4. Validation:
# every direction's dev set translated (beam VALID_BEAM), the best checkpoint by mean BLEU-4.
set -euo pipefail
DATA=$1 PRETRAINED=$2 OUT=$3
. "$(dirname "$0")/finetune_common.sh"
DIRECTIONS=${DIRECTIONS:-en-de,de-en,en-fr,fr-en}
mkdir -p "$OUT"
m3p_train "$OUT/mmt" bleu --task m3p_mmt --criterion m3p_generation --arch "$GEN_ARCH" \
    --pretrained-checkpoint "$PRETRAINED" --directions "$DIRECTIONS" "${VALID_BLEU[@]}"
# the stock command works too: fairseq-generate DATA --user-dir m3p_fairseq --task m3p_mmt \
#     --path OUT/mmt/checkpoint_best.pt --gen-subset test.en-de --beam 10 --post-process sentencepiece
m3p-downstream-eval generate "$DATA" --path "$(trained "$OUT/mmt")" --targets "$DIRECTIONS" --beam "$BEAM" \
    --hyps-dir "$OUT/mmt" --results "${RESULTS:-$OUT/results.json}" --key mmt $EVAL_CPU
