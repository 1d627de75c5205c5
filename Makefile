# The two commands of the README:
#   make repro   set up (first time: a few minutes), then `dvc repro` of params.yaml (the default profile), with
#                independent stages side by side
#   make test    set up, unit tests, then check that a fresh `dvc repro` reproduces the committed metrics
SHELL := /bin/bash
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONHASHSEED := 0
# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning made 2-thread torch 8-10x slower.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup repro test unit reproduce lint paper scan-table ui screenshot docs team-server team-server-stop

setup:
	bash scripts/setup.sh

# Independent stages side by side, one per core (JOBS=1: one at a time, as plain `dvc repro`; scripts/repro.py).
JOBS ?=
repro: setup
	python -m equitune.params check params.yaml
	python scripts/repro.py $(if $(JOBS),--jobs $(JOBS))

# The tests on every core, at most 4 (pytest-xdist; worksteal: an idle worker takes queued tests from a busy one).
# TEST_JOBS=0 runs them in this process, one at a time.
TEST_JOBS ?= $(shell python3 -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')
unit: setup
	python -m pytest -q -m "not slow" -n $(TEST_JOBS) --dist worksteal --durations=10

test: setup
	python -m pytest -q -m "" -n $(TEST_JOBS) --dist worksteal --durations=15
	python scripts/check_reproduce.py

reproduce: setup
	python scripts/check_reproduce.py

lint: setup
	ruff check src pipelines tests scripts

# docs/mlflow-ui.png from this checkout's MLflow store (on a copy of it: the store is never written).
screenshot: setup
	python scripts/screenshot_ui.py

# The documentation site into site/ (what the tests build); `mkdocs serve` serves it on 127.0.0.1:8000.
docs: setup
	NO_MKDOCS_2_WARNING=1 mkdocs build --strict

# Switch params.yaml to the paper-scale profile (GPU + internet): the default with the profiles/paper.yaml overlay.
# `git checkout params.yaml` switches back.
paper: setup
	python -m equitune.params compose profiles/paper.yaml -o params.yaml
	@echo "params.yaml is now the paper profile; run: dvc repro"

# The paper's whole SCAN table (LSTM, GRU and RNN rows) on the default profile: the profiles/scan-table.yaml overlay,
# then the SCAN stages it adds (20:30 more on 2 cores, measured). `git checkout params.yaml` switches back.
scan-table: setup
	python -m equitune.params compose profiles/scan-table.yaml -o params.yaml
	python scripts/repro.py scan_report
	@echo "reports/scan.md now has the LSTM, GRU and RNN rows; git checkout params.yaml returns to the default profile"

# The MLflow UI on mlflow.db (or $MLFLOW_TRACKING_URI), with a link to each experiment's runs table.
PORT ?= 5000
ui: setup
	python -m equitune.pipeline.ui --port $(PORT)

# A team's tracking server (README, "Scaling out"): the recipe in deploy/team-server run without Docker (PostgreSQL +
# S3 stand-in + MLflow's basic auth), on 127.0.0.1:5000 unless TEAM_ARGS says otherwise (e.g. TEAM_ARGS="--port
# 5001"); with Docker: docker compose -f deploy/team-server/docker-compose.yml up -d. The admin account comes from
# MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD (or --admin-credentials FILE in TEAM_ARGS).
team-server: setup
	python scripts/team_server.py start $(TEAM_ARGS)

team-server-stop:
	python scripts/team_server.py stop
