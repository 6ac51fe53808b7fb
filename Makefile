# `make train` and `make test` work on a fresh machine with Python 3.11: they create the
# virtual environment on first use and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/default.py
WORKDIR ?= runs/default

.PHONY: train test lint bench figures install install-dev install-bench clean

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed benchmarks/requirements.txt
	$(PY) -m pip install --quiet -r benchmarks/requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

## Train the default config into $(WORKDIR), then evaluate it on the test split.
train: install
	$(PY) train.py --config $(CONFIG) --workdir $(WORKDIR)
	$(PY) eval.py --config $(CONFIG) --workdir $(WORKDIR)

## Run the test suite (CPU only), in TEST_WORKERS processes (tests sharing the trained
## run stay in one).
TEST_WORKERS ?= 2
test: install-dev
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

## Benchmarks with their PyTorch peer: make bench [CASES=train_small,beam] [BENCH_OUT=f.jsonl]
## [MULTI30K_DIR=path/to/raw/multi30k] (for the input-pipeline case).
CASES ?=
bench: $(VENV)/.installed-bench
	$(PY) -m benchmarks --cases "$(CASES)"

## Figures of docs/transformer-networks.md, the cross-attention one from a trained run:
## make figures [WORKDIR=runs/default]
figures: install
	$(PY) docs/make_figures.py --default_workdir $(WORKDIR)

lint: install-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
