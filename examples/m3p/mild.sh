#!/usr/bin/env bash
# MILD-style retrieval: <query, image, context> triples; results with the context fed with the image
# (<Q,I,C>) and without it (<Q,I>), per language (the MILD table).
#
#   examples/m3p/mild.sh MILD_DATA PRETRAINED OUT
#
# MILD_DATA: a corpus folder from `m3p-import-dataset mild` (captions/{lang} = queries,
# mild/{lang}/context, regions/), or DATA/mild_corpus of the embedded world. Fine-tunes twice on
# TRAIN_LANGS (default en): with and without --context, each validated by mR on the dev queries of
# TRAIN_LANGS (with or without context) and evaluated at its best checkpoint. OUT/results.json gets
# mild.{with,without}_context.
set -euo pipefail
DATA=$1 PRETRAINED=$2 OUT=$3
. "$(dirname "$0")/finetune_common.sh"
LANGS=${LANGS:-$(ls "$DATA/mild" | paste -sd, -)}
mkdir -p "$OUT"
for mode in with_context without_context; do
    flag=$([ "$mode" = with_context ] && echo --context || true)
    m3p_train "$OUT/mild_$mode" mR --task m3p_retrieval --criterion m3p_retrieval --arch "$ARCH" \
        --pretrained-checkpoint "$PRETRAINED" --caption-langs "${TRAIN_LANGS:-en}" --valid-retrieval-images "$VALID_IMAGES" \
        $flag
    m3p-downstream-eval retrieval "$DATA" --path "$(trained "$OUT/mild_$mode")" --langs "$LANGS" $flag \
        ${MAX_IMAGES:+--max-images "$MAX_IMAGES"} --results "${RESULTS:-$OUT/results.json}" --key "mild.$mode" \
        $EVAL_CPU
done
