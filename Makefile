# museformer-plugin — the two README commands are `make demo` and `make test`.
# Both run `make install` first, which is idempotent: it creates .venv, installs torch (keeping one that is
# already there), then fairseq-fixed (--no-deps, see README "Quick start"), then this package with its extras.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean-demo help

help:
	@echo "make demo     # prepare a real built-in corpus -> train -> evaluate -> sample a MIDI"
	@echo "make test     # run the test suite (CPU)"
	@echo "make install  # create .venv with torch, fairseq-fixed and this package"

install: $(STAMP)

$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel "setuptools<81"
	@# Keep a torch that is already installed; otherwise take the CPU wheel (see README, "Quick start").
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "numpy<2" cython cffi
	@# fairseq-fixed lists torchaudio, which would replace torch: install it without its dependencies.
	$(PY) -c "import fairseq" 2>/dev/null || $(PIP) install -q --no-deps --no-build-isolation "fairseq-fixed==0.12.3.1"
	$(PIP) install -q -e ".[dev,corpus]"
	touch $(STAMP)

test: install
	$(VENV)/bin/pytest -q -rs tests

demo: install
	bash run_scripts/demo.sh
