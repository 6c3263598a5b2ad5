#!/usr/bin/env bash
# Multimodal machine translation (Multi30K): a caption and its image -> the caption in another
# language; BLEU-4 per direction (the MMT table). One model for every direction of DIRECTIONS.
#
#   examples/m3p/mmt.sh DATA PRETRAINED_GEN OUT
#
# DATA has parallel captions/{lang}/{split} (the same image on the same line, as Multi30K);
# PRETRAINED_GEN is a generation-model checkpoint; OUT/results.json gets mmt.{src-tgt}.bleu4.
set -euo pipefail
DATA=$1 PRETRAINED=$2 OUT=$3
. "$(dirname "$0")/finetune_common.sh"
DIRECTIONS=${DIRECTIONS:-en-de,de-en,en-fr,fr-en}
mkdir -p "$OUT"
m3p_train "$OUT/mmt" --task m3p_mmt --criterion m3p_generation --arch "$GEN_ARCH" \
    --pretrained-checkpoint "$PRETRAINED" --directions "$DIRECTIONS"
# the stock command works too: fairseq-generate DATA --user-dir m3p_fairseq --task m3p_mmt \
#     --path OUT/mmt/checkpoint_last.pt --gen-subset test.en-de --beam 10 --post-process sentencepiece
m3p-downstream-eval generate "$DATA" --path "$OUT/mmt/checkpoint_last.pt" --targets "$DIRECTIONS" --beam "$BEAM" \
    --hyps-dir "$OUT/mmt" --results "${RESULTS:-$OUT/results.json}" --key mmt $EVAL_CPU
