# make demo: install what is missing, then pre-train and evaluate on the embedded world.
# make test: install what is missing, then run the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip -q
STAMP := $(VENV)/.m3p-installed
# everything fairseq needs except torchaudio (speech only), and what this plugin needs
DEPS := cffi cython numpy regex "sacrebleu>=1.4.12" tqdm bitarray scikit-learn packaging \
        hydra-core==1.3.2 omegaconf==2.3.0 sentencepiece h5py tensorboardX pycocoevalcap fairscale==0.4.13 \
        pytest matplotlib transformers safetensors lmdb

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip wheel setuptools
	# CPU torch from local disk; an unpinned torch would pull a multi-GB CUDA build
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install $(DEPS)
	# fairseq built against the torch above (no build isolation); --no-deps keeps torchaudio out
	$(PY) -c "import fairseq" 2>/dev/null || $(PIP) install --no-deps --no-build-isolation \
	    "fairseq-fixed==0.12.3.1; python_version >= '3.11'" "fairseq==0.12.2; python_version < '3.11'"
	$(PIP) install --no-deps -e .
	# lets `--user-dir m3p_fairseq` resolve from any working directory (fairseq looks beside itself)
	$(PY) -m m3p_fairseq.userdir
	touch $(STAMP)

demo: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash examples/m3p/demo.sh

test: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -q tests

clean:
	rm -rf demo-output .pytest_cache
