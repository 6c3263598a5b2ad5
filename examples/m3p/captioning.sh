#!/usr/bin/env bash
# Multilingual image captioning: fine-tune the generation model (IC), beam 10, BLEU-4 and CIDEr per
# language (the captioning table).
#
#   examples/m3p/captioning.sh DATA PRETRAINED_GEN OUT
#
# TRAIN_LANGS: the caption languages fine-tuned on (default LANGS, i.e. fine-tune on all, merged;
# one language: fine-tune on each, one run per language); OUT/results.json gets captioning.{lang}.
# Uses the m3p_captioning task and fairseq's --finetune-from-model (weights of PRETRAINED_GEN); validation
# captions the dev images of the training languages (beam VALID_BEAM) and keeps the best by mean BLEU-4.
set -euo pipefail
DATA=$1 PRETRAINED=$2 OUT=$3
. "$(dirname "$0")/finetune_common.sh"
LANGS=${LANGS:-en,de,fr,cs,ja,zh}
mkdir -p "$OUT"
m3p_train "$OUT/captioning" bleu --task m3p_captioning --criterion m3p_generation --arch "$GEN_ARCH" \
    --finetune-from-model "$PRETRAINED" --caption-langs "${TRAIN_LANGS:-$LANGS}" "${VALID_BLEU[@]}"
# the stock command works too: fairseq-generate DATA --user-dir m3p_fairseq --task m3p_captioning \
#     --path OUT/captioning/checkpoint_best.pt --gen-subset test --target-lang de --beam 10 --post-process sentencepiece
m3p-downstream-eval generate "$DATA" --path "$(trained "$OUT/captioning")" --targets "$LANGS" --beam "$BEAM" \
    --hyps-dir "$OUT/captioning" --results "${RESULTS:-$OUT/results.json}" --key captioning $EVAL_CPU
