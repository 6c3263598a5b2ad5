#!/usr/bin/env bash
# Prepares, here (where PyPI is reachable), what benchmarks/gpu_check.sh installs on a bare GPU machine
# whose Python has a CUDA torch, numpy, Cython, h5py, sentencepiece, sacrebleu and transformers but no
# fairseq (the workplace's H200 image: Python 3.12): wheels of fairseq's configuration packages and fairscale for that
# Python, and fairseq's source, whose two Cython modules gpu_check.sh compiles there (its C++/CUDA
# extensions are not needed for training). Everything lands in .whl/, which git ignores through
# .git/info/exclude and the device tool carries:
#
#   bash benchmarks/gpu_wheels.sh                 # once; about 15 MB
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-$( [ -x .venv/bin/pip ] && echo .venv/bin/pip || echo "python3 -m pip" )}
PY_VERSION=${PY_VERSION:-3.12}
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
rm -rf .whl
mkdir -p .whl
$PIP download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    hydra-core==1.3.2 omegaconf==2.3.0 bitarray tensorboardX
$PIP wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # hydra's parser; PyPI has its source only (pure Python)
# fairseq's --ddp-backend fully_sharded and --zero-sharding os (PyPI has its source only; pure Python)
$PIP wheel -q --no-deps -w .whl fairscale==0.4.13
# fairseq's source as published (its metadata is read with this environment's torch, not a downloaded one)
$PIP download -q --no-deps --no-binary=:all: --no-build-isolation -d .whl fairseq-fixed==0.12.3.1
ls -1 .whl >&2
du -sh .whl >&2
