# One venv with everything; `make install` is idempotent (re-runs only when pyproject.toml changes).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp

.PHONY: install system lint test test-fast docs bench demo demo-seg demo-pheno study search clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip uv
	# CPU torch first, with pip (it finds the local CPU wheel): a range that admits newer releases would
	# otherwise pull the CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	# The rest with uv: 65 s on a fresh 2-core machine where pip took 125 s (parallel downloads, bytecode
	# compiled on all cores; compiled here, since imports may not write it: PYTHONDONTWRITEBYTECODE).
	# pip if uv cannot reach an index. compat mode: the repository root goes on sys.path, so every
	# top-level package is importable as it is.
	$(BIN)/uv pip install --python $(BIN)/python -q --compile-bytecode -e ".[dev]" -C editable_mode=compat \
	  || $(BIN)/pip install -q -e ".[dev]" --config-settings editable_mode=compat
	touch $(STAMP)

# Debian packages for the browser and SLURM tests (skipped without root/apt-get).
system:
	bash scripts/install-system.sh

lint: install
	$(BIN)/ruff check .
	# the layers contract (pyproject.toml [tool.importlinter]): no upward or circular import between rooms
	$(BIN)/lint-imports

# The tiers (tests/conftest.py): unit, workflow (starts Snakemake), slurm, browser, gpu. `make test` (CI)
# runs them all on 2 workers: the workflow and slurm tests on one (they share one run of the small
# study), the rest on the other, longest first (tests/conftest.py `_schedule_rank`; xdist's own reordering
# would put a group of one long test last). `make test-fast` is the inner loop: the unit tier only.
# PYTEST_ARGS pass through, e.g. make test PYTEST_ARGS="--cov=. --cov-report=term".
WORKERS ?= 2
PYTEST_ARGS ?=
# The rooms' bytecode, written before the tests: where PYTHONDONTWRITEBYTECODE is set (as on CI), every command and
# Snakemake job (several hundred in `make test`) would otherwise compile the rooms again, 0.2 s each.
PACKAGES := $(patsubst %/__init__.py,%,$(wildcard */__init__.py))
COMPILE := PYTHONDONTWRITEBYTECODE= $(BIN)/python -m compileall -q -j 0 $(PACKAGES) >/dev/null
# The Debian packages and the venv install side by side (both mostly wait on downloads), then lint and docs.
test:
	$(MAKE) -j2 install system
	$(MAKE) -j2 lint docs
	$(COMPILE)
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadgroup --no-loadscope-reorder --durations=15 $(PYTEST_ARGS) tests

test-fast: install
	$(COMPILE)
	$(BIN)/python -m pytest -q -m unit -n $(WORKERS) --durations=15 $(PYTEST_ARGS) tests

# The documentation site (docs/, mkdocs.yml) into site/, offline; --strict fails on a broken link,
# a page missing from the nav or a stale generated reference.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

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

demo-seg: install
	$(BIN)/python -c "from prompts.blobs import make_blob_pairs; make_blob_pairs('demo-seg/data', n=24, size=128)"
	$(BIN)/snakemake --cores $(CORES) --configfile examples/segmentation/study.yaml $(SNAKEMAKE_ARGS)

# Phenotyping and counting in co-cultures (study.task: phenotyping): scenes composed from ../shared/data/rbc3
# (numpy-drawn cells without it); the data is made once and never overwritten.
demo-pheno: install
	test -d demo-pheno/data || $(BIN)/python examples/phenotyping/make_data.py demo-pheno/data
	$(BIN)/snakemake --cores $(CORES) --configfile examples/phenotyping/study.yaml $(SNAKEMAKE_ARGS)

# The study file is checked before anything else (install included): one line and exit 2 without it.
_NEEDS_CONFIG := $(firstword $(filter study search,$(MAKECMDGOALS)))
ifneq ($(_NEEDS_CONFIG),)
ifeq ($(strip $(CONFIG)),)
$(error give the study file: make $(_NEEDS_CONFIG) CONFIG=my_study.yaml)
endif
ifeq ($(wildcard $(CONFIG)),)
$(error study file $(CONFIG) does not exist: make $(_NEEDS_CONFIG) CONFIG=my_study.yaml)
endif
endif

study: install
	$(BIN)/python -m study.run --cores $(CORES) --configfile $(CONFIG) $(SNAKEMAKE_ARGS)

# The parameter search as workflow jobs (search.workers at once), then the best settings as a study of
# their own (SEARCH/best/, a second invocation: the same SNAKEMAKE_ARGS, e.g. a SLURM profile), then
# OUT/comparison.html; see README "Search".
search: install
	$(BIN)/snakemake --cores $(CORES) all search --configfile $(CONFIG) $(SNAKEMAKE_ARGS)
	best="$$($(BIN)/python -m study best-study --config $(CONFIG))" && \
	  $(BIN)/snakemake -s $(CURDIR)/workflow/Snakefile --cores $(CORES) --configfile "$$best" --directory "$$(dirname "$$best")" $(SNAKEMAKE_ARGS)
	$(BIN)/snakemake --cores $(CORES) compare --configfile $(CONFIG) $(SNAKEMAKE_ARGS)

clean:
	rm -rf $(VENV) demo demo-seg demo-pheno site
