# The README's two commands: `make demo` and `make test`. Both create the environment if needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DOCS_DIR ?= site

.PHONY: install demo test lint typecheck docs pytest components dashboards bench bench-engine bench-peers bench-remote bench-runs clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# The demo's runs go to the default run store, so `stageflow-otel runs` shows the history.
demo: install
	$(PY) -m stageflow_otel demo --store --checkpoints

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

# The guides and an API reference generated from the docstrings (mkdocs.yml), built offline.
# Strict: a broken link or cross-reference, or a docstring that cannot be parsed, fails it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir $(DOCS_DIR)

# Real components the tests talk to: Debian packages, and Go-built binaries cached outside git.
components:
	@if [ -x scripts/ensure-system-deps.sh ]; then scripts/ensure-system-deps.sh; fi
	@if [ -x scripts/build-components.sh ]; then scripts/build-components.sh; fi
	@if [ -x scripts/build-schemas.sh ]; then scripts/build-schemas.sh; fi

dashboards: install
	$(PY) scripts/gen-dashboards.py

pytest: install
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck docs components pytest

# What observing a stage costs (the table of docs/telemetry.md); the engine alone; against peers.
bench: install
	$(PY) benchmarks/telemetry.py

bench-engine: install
	$(PY) benchmarks/engine.py

bench-peers: install
	$(PY) benchmarks/peers.py

# Remote stages on a local Dask cluster of 2 worker processes: overhead and speed-up.
bench-remote: install
	$(PY) benchmarks/remote.py
# What recording runs (history, checkpoints) costs per stage; the demo's checkpoint sizes.
bench-runs: install
	$(PY) benchmarks/runs.py

clean:
	rm -rf $(VENV) $(DOCS_DIR) .mypy_cache .ruff_cache .pytest_cache .hypothesis
