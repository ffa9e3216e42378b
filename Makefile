# pfl: one-line commands. `make run` and `make test` set up .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
MLFLOW_DB := outputs/mlflow.db
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run study test test-fast lint bench bench-gpu ui clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Torch first: the pinned CPU wheel satisfies pyproject's range, so no CUDA packages come in.
$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH_PIN)"
	$(PIP) install -e ".[dev,sweep,ray]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install pfl with dev, sweep and ray extras (idempotent)

run: $(STAMP) ## run the default study (three strategies) and print the comparison report
	$(BIN)/pfl experiment=quick $(ARGS)
	$(BIN)/pfl-report --experiment quick
	@echo "Dashboard: make ui   (mlflow ui --backend-store-uri sqlite:///$(abspath $(if $(PFL_ROOT_DIR),$(PFL_ROOT_DIR)/)$(MLFLOW_DB)); open http://127.0.0.1:5000, Ctrl-C stops it)"

study: $(STAMP) ## run the results grid (resumable; ARGS="--dry-run" or overrides for every cell), write RESULTS.md
	$(BIN)/pfl-study results $(ARGS)

# Test files spread over TEST_JOBS processes (pytest-xdist; a file stays in one process, so its
# module fixtures are built once): most tests train with one torch thread, so 2 cores run 2 files.
TEST_JOBS ?= 2

test: $(STAMP) ## run the test suite (integration tests need PFL_DATA_DIR; TEST_JOBS=1 for one process)
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile $(ARGS)

lint: $(STAMP) ## ruff check
	$(BIN)/ruff check pfl tests

bench: $(STAMP) ## run benchmarks, write BENCHMARKS.md
	$(BIN)/python tests/bench.py $(ARGS)

bench-gpu: $(STAMP) ## time experiment=seed_phase3 on a CUDA GPU (skips without one)
	$(BIN)/python tests/bench.py --gpu $(ARGS)

ui: $(STAMP) ## open the MLflow dashboard on the default store (ARGS="--port 5001" for another port)
	MLFLOW_DISABLE_TELEMETRY=$${MLFLOW_DISABLE_TELEMETRY:-true} $(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(if $(PFL_ROOT_DIR),$(PFL_ROOT_DIR)/)$(MLFLOW_DB)) --host 127.0.0.1 $(ARGS)

clean: ## remove .venv, caches and run outputs
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
