# Two commands on a fresh machine: `make run` (the default config) and `make test` (the whole suite).
# Both create .venv and install the pinned requirements first (idempotent; fast when already there).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup setup-urls setup-retrieval run test bench lint slurm

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

I2D := .venv-img2dataset
I2D_STAMP := $(I2D)/.installed

# Tools whose pins conflict with .venv's get a venv of their own, .venv-NAME, from envs/NAME.yaml's pip list:
# img2dataset (the `urls` source's downloader) needs pandas<3; embedding-reader and autofaiss (the readers
# tests/test_exporters_retrieval.py runs on an export) need numpy<2 and pandas<3
.venv-%/.installed: envs/%.yaml $(STAMP)
	test -x .venv-$*/bin/python || $(PY) -m venv .venv-$*
	$(BIN)/python -c "import yaml; d = yaml.safe_load(open('envs/$*.yaml'))['dependencies']; print('\n'.join(next(x['pip'] for x in d if isinstance(x, dict))))" > .venv-$*/requirements.txt
	.venv-$*/bin/python -m pip install -q -r .venv-$*/requirements.txt
	touch $@

RET := .venv-retrieval
RET_STAMP := $(RET)/.installed

setup-retrieval: $(RET_STAMP)

# `make setup` is the main venv only; img2dataset's venv (large) only where a `urls` source needs it: `make run`
# builds it when config/config.yaml configures one, `make test` for tests/test_urls.py, or `make setup-urls`
setup: $(STAMP)

setup-urls: $(I2D_STAMP)

# its bin/ comes last on PATH: the download rule finds `img2dataset` there, every other command in .venv
run: setup
	@if $(BIN)/python scripts/urls_configured.py config/config.yaml; then $(MAKE) --no-print-directory setup-urls; fi
	PATH=$(CURDIR)/$(BIN):$$PATH:$(CURDIR)/$(I2D)/bin snakemake

# The SLURM test runs a real single-node cluster: Debian's slurm-wlm + munge, installed here when we are root
# with apt-get; elsewhere tests/test_slurm.py is skipped with the reason printed.
slurm:
	@if command -v slurmctld >/dev/null && command -v munged >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing slurm-wlm and munge for the SLURM test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
	    || echo "apt-get failed: the SLURM test will be skipped"; \
	else echo "not root with apt-get: the SLURM test will be skipped"; fi

test: setup setup-urls setup-retrieval slurm
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -rs --durations=25 $(PYTEST_ARGS)

lint: setup
	PATH=$(CURDIR)/$(BIN):$$PATH snakemake --lint

bench: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/clip_pipeline.py

# The GPU acceptance run (bench/gpu_check.py): every CUDA path against the CPU, and timed, within GPU_CHECK_BUDGET
# seconds; prints the table, writes it to bench/out/gpu_check.json. On a CPU: GPU_CHECK_ARGS="--device cpu --smoke"
.PHONY: gpu-check
GPU_CHECK_BUDGET ?= 450
gpu-check: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/gpu_check.py --budget-s $(GPU_CHECK_BUDGET) $(GPU_CHECK_ARGS)
