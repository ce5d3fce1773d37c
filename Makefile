# router_pipelines — two commands for a fresh machine: `make run` and `make test`.
# Both create .venv at the project root and install the project with the tested pins.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= constraints.txt
STAMP := $(VENV)/.installed
# Nothing in this project talks to the network at run time.
export KEDRO_DISABLE_TELEMETRY := 1
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK := true

.PHONY: install run run-debug test lint format viz mlflow-ui benchmarks clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

run: install  ## the default pipeline on the embedded corpus
	$(BIN)/kedro run

run-debug: install  ## every size tiny (a few minutes on 2 cores)
	$(BIN)/kedro run --env=debug

test: install  ## the whole test suite, offline
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

viz: install  ## Kedro-Viz on http://127.0.0.1:4141
	$(BIN)/kedro viz run --host 127.0.0.1 --port 4141 --no-browser

mlflow-ui: install  ## MLflow UI on http://127.0.0.1:5000 over the project's store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

benchmarks: install  ## writes figures to docs/benchmarks.md (see benchmarks/README.md)
	$(BIN)/python benchmarks/run_all.py

clean:  ## removes outputs, not the venv or the embedded corpus
	rm -rf data/0[2-8]_*/* mlflow.db mlruns build
