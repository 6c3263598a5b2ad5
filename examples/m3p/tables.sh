#!/usr/bin/env bash
# The paper's tables (retrieval, MILD, captioning, MMT, XNLI, NTG; a column per language) from a results JSON.
#   examples/m3p/tables.sh OUT/results.json [retrieval|mild|captioning|mmt|xnli|ntg]
set -euo pipefail
m3p-results-table "$1" ${2:+--table "$2"}
