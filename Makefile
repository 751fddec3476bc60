# One venv with everything; `make install` is idempotent (re-runs only when pyproject.toml changes).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp

.PHONY: install system lint test bench demo study clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: a range that admits newer releases would otherwise pull the CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	# compat mode: the repository root goes on sys.path, so every top-level package is importable as it is.
	$(BIN)/pip install -q -e ".[dev]" --config-settings editable_mode=compat
	touch $(STAMP)

# Debian packages for the browser and SLURM tests (skipped without root/apt-get).
system:
	bash scripts/install-system.sh

lint: install
	$(BIN)/ruff check .
	# the layers contract (pyproject.toml [tool.importlinter]): no upward or circular import between rooms
	$(BIN)/lint-imports

test: install system lint
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python -m bench

# The whole study through the workflow (workflow/Snakefile) via `python -m study.run`, which checks the
# study file first (one line, exit 2, as `python -m prompts check`); CORES and SNAKEMAKE_ARGS pass through,
# e.g. make study CONFIG=my_study.yaml SNAKEMAKE_ARGS="--resources gpu=4".
CORES ?= all
SNAKEMAKE_ARGS ?=
demo: install
	$(BIN)/python -m prompts demo-data demo/data --images 90 --size 128
	$(BIN)/python -m study.run --cores $(CORES) --configfile examples/quickstart/study.yaml $(SNAKEMAKE_ARGS)
	@echo "report: $(CURDIR)/demo/report/report.html"

study: install
	@test -n "$(CONFIG)" || { echo "error: give the study file: make study CONFIG=my_study.yaml" >&2; exit 2; }
	$(BIN)/python -m study.run --cores $(CORES) --configfile $(CONFIG) $(SNAKEMAKE_ARGS)

clean:
	rm -rf $(VENV) demo
