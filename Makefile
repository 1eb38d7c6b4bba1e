# One entry point for attendees, instructors and CI. Every target sets itself up first.
#   make run-all   set up, then run notebooks 01..NN with papermill into outputs/
#   make test      set up, then run the test suite (what .ci/run calls)
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
KERNEL := recsys-lab
# GPU=1 installs mxnet-cu112 and the CUDA 11 runtime wheels; default: auto-detect an NVIDIA GPU.
GPU    ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
ifeq ($(GPU),1)
  MX_EXTRA := gpu
  MX_OTHER := mxnet
else
  MX_EXTRA := cpu
  MX_OTHER := mxnet-cu112
endif
STAMP  := $(VENV)/.setup-$(MX_EXTRA)
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))
OUT    := outputs
# Notebook parameters for every notebook, e.g. NB_ARGS='-p seed 7' (values parse as JSON)
NB_ARGS ?=
PYTEST_ARGS ?=

.PHONY: help setup sync run-all test test-slow bench lint clean distclean
help:
	@echo "make run-all    set up and run every notebook (outputs/)"
	@echo "make test       set up and run the tests"
	@echo "make setup      virtualenv in $(VENV), package + MXNet ($(MX_EXTRA)), Jupyter kernel '$(KERNEL)'"
	@echo "make sync       regenerate notebooks/*.ipynb from their py:percent sources"
	@echo "make bench      run the benchmarks under benchmarks/"
	@echo "make test-slow  the slow test tier"
	@echo "make lint       ruff (pyflakes rules)"

setup: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	@# the cpu and gpu wheels both install the `mxnet` package: never keep both
	@if $(BIN)/python -m pip show --quiet $(MX_OTHER) >/dev/null 2>&1; then $(BIN)/python -m pip uninstall -y $(MX_OTHER); fi
	$(BIN)/python -m pip install --quiet -e ".[$(MX_EXTRA),dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (recsys lab)" >/dev/null
	$(BIN)/python -c "import recsys.mx as m; print('mxnet', m.mx.__version__, 'gpus:', m.num_gpus())"
	@rm -f $(VENV)/.setup-*
	@touch $@

sync: $(STAMP)
	@# --update keeps the existing cell ids, so an unchanged source gives an unchanged .ipynb
	$(BIN)/jupytext --quiet --update --to ipynb $(NOTEBOOKS)

run-all: $(STAMP)
	$(BIN)/python -m recsys.runner --out $(OUT) $(NB_ARGS)
	@echo "outputs: $(OUT)/notebooks (executed), $(OUT)/metrics (JSON), $(OUT)/figures (plots)"

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

bench: $(STAMP)
	@set -e; for b in benchmarks/bench_*.py; do echo "=== $$b"; $(BIN)/python $$b; done

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks notebooks

clean:
	rm -rf $(OUT) .pytest_cache benchmarks/_work

distclean: clean
	rm -rf $(VENV) src/*.egg-info
