# One entry point for attendees, instructors and CI. Every target sets itself up first.
#   make run-all   set up, then run notebooks 01..NN with papermill into outputs/
#   make test      set up, then run the test suite (what .ci/run calls)
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Python 3.10 or 3.11 (numpy<1.24, which MXNet 1.9.1 needs, has no wheels for 3.12): python3.11,
# python3.10, `python3` when it is one of those, or the conda `python3` environment of a SageMaker
# notebook instance (its kernels are Python 3.10; the system python3 there is 3.9).
PY_CANDIDATES := python3.11 python3.10 python3 /home/ec2-user/anaconda3/envs/python3/bin/python
PYTHON ?= $(shell for p in $(PY_CANDIDATES); do \
            command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 11))' 2>/dev/null \
            && { command -v $$p; break; }; done)
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
# USER_KERNEL=1 also registers the kernel for the user's own Jupyter (default: on a SageMaker notebook instance)
USER_KERNEL ?= $(if $(wildcard /opt/ml/metadata/resource-metadata.json),1,0)
STAMP  := $(VENV)/.setup-$(MX_EXTRA)
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))
OUT    := outputs
# Notebook parameters for every notebook, e.g. NB_ARGS='-p seed 7' (values parse as JSON)
NB_ARGS ?=
# Run only these notebooks, e.g. ONLY=02_train_local (default: all, in order)
ONLY ?=
PYTEST_ARGS ?=

.PHONY: help setup sync run-all lab test test-extended test-slow test-gpu-extra bench bench-full lint clean distclean
help:
	@echo "make run-all    set up and run every notebook (outputs/)"
	@echo "make test       set up and run the tests"
	@echo "make lab        JupyterLab on http://127.0.0.1:8888 with the recsys-lab kernel (LAB_PORT=...)"
	@echo "make setup      virtualenv in $(VENV), package + MXNet ($(MX_EXTRA)), Jupyter kernel '$(KERNEL)'"
	@echo "make sync       regenerate notebooks/*.ipynb from their py:percent sources"
	@echo "make bench      run the benchmarks under benchmarks/ (all but the full-size one)"
	@echo "make bench-full make run-all on 110M synthetic rows against the sample: time and peak memory (~2 h)"
	@echo "make test-extended  the slower end-to-end checks CI runs after make test (~11 min)"
	@echo "make test-slow  the slow test tier"
	@echo "make test-gpu-extra  install the gpu extra in its own venv and check it imports (no GPU needed)"
	@echo "make lint       ruff (pyflakes rules)"

setup: $(STAMP)
$(STAMP): pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
	  if [ -z "$(PYTHON)" ]; then echo "make: no Python 3.10 or 3.11 found (tried $(PY_CANDIDATES)); install one, or run make PYTHON=/path/to/python3.10" >&2; exit 1; fi; \
	  echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); fi
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	@# the cpu and gpu wheels both install the `mxnet` package: never keep both
	@if $(BIN)/python -m pip show --quiet $(MX_OTHER) >/dev/null 2>&1; then $(BIN)/python -m pip uninstall -y $(MX_OTHER); fi
	$(BIN)/python -m pip install --quiet -e ".[$(MX_EXTRA),toolkits,dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (recsys lab)" >/dev/null
	@# a SageMaker notebook instance's JupyterLab runs from its own conda env: it sees user-level kernels only
	@if [ "$(USER_KERNEL)" = 1 ]; then $(BIN)/python -m ipykernel install --user --name $(KERNEL) --display-name "Python (recsys lab)" >/dev/null && echo "kernel $(KERNEL) registered for your Jupyter"; fi
	$(BIN)/python -c "import recsys.mx as m; print('mxnet', m.mx.__version__, 'gpus:', m.num_gpus())"
	@rm -f $(VENV)/.setup-*
	@touch $@

sync: $(STAMP)
	@# --update keeps the existing cell ids, so an unchanged source gives an unchanged .ipynb
	$(BIN)/jupytext --quiet --update --to ipynb $(NOTEBOOKS)

run-all: $(STAMP)
	$(BIN)/python -m recsys.runner $(ONLY) --out $(OUT) $(NB_ARGS)
	@echo "outputs: $(OUT)/notebooks (executed), $(OUT)/metrics (JSON), $(OUT)/figures (plots)"

LAB_PORT ?= 8888
lab: $(STAMP)
	@test -x $(BIN)/jupyter-lab || $(BIN)/python -m pip install --quiet -e ".[$(MX_EXTRA),toolkits,lab,dev]"
	@echo "open the URL below; pick the kernel 'Python (recsys lab)'; Ctrl-C stops JupyterLab"
	$(BIN)/jupyter lab --ip 127.0.0.1 --port $(LAB_PORT) --no-browser --notebook-dir notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-extended: $(STAMP)
	$(BIN)/python -m pytest -m extended $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-gpu-extra: $(STAMP)
	$(BIN)/python -m pytest -m gpu_extra $(PYTEST_ARGS)

# the ranking table and the reference rankers whose figures the README quotes: the October sample
BENCH_SAMPLE := data/sample/rees46_2019-Oct_head_0000-0250UTC.csv.gz
bench: $(STAMP)
	@set -e; for b in $(filter-out benchmarks/bench_full_lab.py,$(wildcard benchmarks/bench_*.py)); do echo "=== $$b"; $(BIN)/python $$b; done
	@echo "=== benchmarks/ranking_table.py $(BENCH_SAMPLE) --choose"
	@$(BIN)/python benchmarks/ranking_table.py $(BENCH_SAMPLE) --choose
	@echo "=== benchmarks/ranking_references.py (the October sample, prepared into benchmarks/_work/prepared)"
	@$(BIN)/recsys prepare -q --force --out benchmarks/_work/prepared $(BENCH_SAMPLE) >/dev/null
	@$(BIN)/python benchmarks/ranking_references.py benchmarks/_work/prepared

# the whole lab at the workshop's size (110M synthetic rows, generated once into benchmarks/_work/full/): ~2 h
bench-full: $(STAMP)
	$(BIN)/python benchmarks/bench_full_lab.py $(BENCH_FULL_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks notebooks

clean:
	rm -rf $(OUT) .pytest_cache benchmarks/_work

distclean: clean
	rm -rf $(VENV) src/*.egg-info
