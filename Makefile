# One venv with everything; `make install` is idempotent (re-runs only when pyproject.toml changes).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp

.PHONY: install system lint test bench demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: a range that admits newer releases would otherwise pull the CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

# Debian packages for the browser and SLURM tests (skipped without root/apt-get).
system:
	bash scripts/install-system.sh

lint: install
	$(BIN)/ruff check .

test: install system lint
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python -m bench

demo: install
	bash examples/quickstart/study.sh demo

clean:
	rm -rf $(VENV) demo
