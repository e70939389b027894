# Two commands on a fresh machine: `make run` (the default config) and `make test` (the whole suite).
# Both create .venv and install the pinned requirements first (idempotent; fast when already there).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test bench lint

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

run: setup
	PATH=$(CURDIR)/$(BIN):$$PATH snakemake

test: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest --durations=25 $(PYTEST_ARGS)

lint: setup
	PATH=$(CURDIR)/$(BIN):$$PATH snakemake --lint

bench: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/clip_pipeline.py
