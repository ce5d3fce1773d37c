# router_pipelines — two commands for a fresh machine: `make run` and `make test`.
# Both create .venv at the project root and install the project with the tested pins.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= constraints.txt
STAMP := $(VENV)/.installed
# Nothing in this project talks to the network at run time: no telemetry (the same switches
# as router_pipelines/telemetry.py; a value the user set is kept).
export KEDRO_DISABLE_TELEMETRY := 1
export MLFLOW_DISABLE_TELEMETRY ?= true
export HF_HUB_DISABLE_TELEMETRY ?= 1
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK := true

.PHONY: install run run-debug test lint format viz viz-build mlflow-ui notebook browser benchmarks \
	clean clean-all airflow-venv airflow-dags airflow-test

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

test: install browser airflow-venv  ## the whole test suite, offline (browser and Airflow checks included)
	$(BIN)/python -m pytest -n 2 --dist loadscope --durations=15

# Headless Chromium for the browser checks (tests/operations/test_browser.py): Debian's package,
# installed with apt-get when missing and run as root (CI); elsewhere install it yourself, and
# the browser tests are skipped until you do (CI=1 makes them fail instead).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing chromium (apt-get) for the browser checks"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		else \
			echo "warning: chromium not found and not root: the browser tests will be skipped" \
				"(sudo apt-get install -y chromium)"; \
		fi; }

# Scheduled retraining with Airflow 3 (README, "Scheduled retraining (Airflow)"). Airflow has its
# own virtualenv and pins (constraints-airflow.txt, frozen from a working install): its
# constraints do not match the project's, and it needs neither torch nor Kedro, because every
# DAG task runs `kedro run` with the project's .venv.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_CONSTRAINTS ?= constraints-airflow.txt
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
AIRFLOW_DAGS ?= airflow_dags

airflow-venv: $(AIRFLOW_STAMP)  ## .venv-airflow: apache-airflow 3.3.2 + the standard provider

$(AIRFLOW_STAMP): $(AIRFLOW_CONSTRAINTS)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet -c $(AIRFLOW_CONSTRAINTS) \
		apache-airflow==3.3.2 apache-airflow-providers-standard
	touch $(AIRFLOW_STAMP)

airflow-dags: install  ## airflow_dags/{local,debug}/: one DAG per pipeline (kedro-airflow)
	airflow/generate_dags.sh $(CURDIR) $(CURDIR)/$(VENV) $(AIRFLOW_DAGS)

airflow-test: install airflow-venv  ## the Airflow checks: DagBag import, `airflow dags test`
	$(BIN)/python -m pytest -q tests/operations/test_airflow.py tests/operations/test_freshness.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

viz: install  ## Kedro-Viz on http://127.0.0.1:4141
	$(BIN)/kedro viz run --host 127.0.0.1 --port 4141 --no-browser

viz-build: install  ## the static Kedro-Viz site in build/ (open build/index.html via a web server)
	$(BIN)/kedro viz build

# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: no server-side job runner (eight huey worker processes
# for GenAI judges and prompt optimization, which this project does not use). The link opens the
# UI in its model-training mode (the UI's own switch; see docs/operations.md).
mlflow-ui: install  ## MLflow UI on http://127.0.0.1:5000 over the project's store
	@echo "MLflow UI: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
		$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

notebook: install  ## Jupyter on the project's kernel (notebooks/compare_runs.ipynb)
	$(BIN)/kedro jupyter notebook --no-browser --ip 127.0.0.1

benchmarks: install  ## writes figures to docs/benchmarks.md (see benchmarks/README.md)
	$(BIN)/python benchmarks/run_all.py

# `make clean`: only what the next run rebuilds cheaply (token caches, reports, staging folders,
# Kedro-Viz output, leftovers of interrupted atomic writes). Never models, checkpoints or MLflow.
CHEAP_OUTPUTS = $(wildcard data/04_feature/token_cache* data/05_model_input/* data/08_reporting/* \
	data/02_intermediate/*) \
	$(wildcard build .viz)
# `make clean-all` also removes these, plus everything under data/ but the embedded corpus.
RUN_HISTORY = $(wildcard mlflow.db mlflow.db-* mlruns mlartifacts)
CORPUS = data/01_raw/python_docs.jsonl

clean:  ## removes token caches, reports, staging folders, build/, .viz (not models or MLflow)
	@removed=0; \
	for path in $(CHEAP_OUTPUTS) $$(find data \( -name '.tmp-*' -o -name '.old-*' \) -prune 2>/dev/null); do \
		[ -e "$$path" ] || continue; \
		rm -rf -- "$$path" && echo "removed $$path" && removed=1; \
	done; \
	[ $$removed = 1 ] || echo "nothing to clean"; \
	echo "kept: models, checkpoints, mlflow.db and artifacts (make clean-all deletes them)"

clean-all:  ## deletes models, checkpoints, MLflow runs/registry, all of data/ but the corpus (asks; FORCE=1)
	@paths=$$( { for path in $(RUN_HISTORY) $(wildcard build .viz); do echo "$$path"; done; \
		find data -mindepth 2 -maxdepth 2 ! -name .gitkeep ! -path '$(CORPUS)' 2>/dev/null; \
		find data -mindepth 1 -maxdepth 1 -type f ! -name .gitkeep 2>/dev/null; } | sort -u ); \
	if [ -z "$$paths" ]; then echo "nothing to delete"; exit 0; fi; \
	echo "make clean-all deletes (models, checkpoints, runs and registry cannot be rebuilt cheaply):"; \
	echo "$$paths" | sed 's/^/  /'; \
	if [ "$(FORCE)" != 1 ]; then \
		printf 'Delete all of this? [y/N] '; \
		read -r answer || answer=; \
		case "$$answer" in y|Y|yes|YES) ;; *) echo "nothing deleted (answer y, or run make clean-all FORCE=1)"; exit 1;; esac; \
	fi; \
	echo "$$paths" | while read -r path; do rm -rf -- "$$path" && echo "removed $$path"; done
