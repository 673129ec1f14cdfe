# Tweet-sentiment platform. `make up` starts everything locally (no Docker needed).
#
#   make env                     create/refresh .venv (idempotent, instant when up to date)
#   make up [DATA=path.csv]      start PostgreSQL and a supervisor running MLflow, Airflow, the API; train a first model
#   make up ONLY=mlflow,api      start a subset (no training)
#   make up TRAIN=0              start without training
#   make up FORCE_TRAIN=1        train even when a champion exists
#   make up PROGRESSIVE=0        no background comparison with the transformer after the first champion
#   make up API_REPLICAS=2       N API instances (own prediction logs) behind HAProxy on the API port
#   make up EXECUTOR=celery      Airflow's CeleryExecutor + CELERY_WORKERS=N workers (default 2), each its own var/
#   make status | make down      what runs, restarts, crash loops | stop it all (data is kept)
#   make test [PYTEST_ARGS=...]  the whole test suite: tests/unit + tests/system (PYTEST_ARGS="-m 'not slow'": no end-to-end runs)
#   make test-fast               tests/unit only: no PostgreSQL, MLflow, Airflow or server needed (under two minutes)
#   make bench                   the benchmarks in benchmarks/ (not _setup.py, not the 30-minute soak.py)
#   make lint                    ruff (lint, format, imports at the top), mypy, lint-imports (the layers)
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?=
TRAIN ?= 1
FORCE_TRAIN ?= 0
PROGRESSIVE ?=
ONLY ?=
API_REPLICAS ?=
EXECUTOR ?=
CELERY_WORKERS ?=
PYTEST_ARGS ?=

export XDG_RUNTIME_DIR ?= /tmp/runtime-$(shell id -u)
export HF_HUB_OFFLINE ?= 1

SERVICES_UP_ARGS := $(if $(DATA),--data "$(abspath $(DATA))") \
	$(if $(filter 0 no false,$(TRAIN)),--no-train) \
	$(if $(filter-out 0 no false,$(FORCE_TRAIN)),--force-train) \
	$(if $(filter 0 no false,$(PROGRESSIVE)),--no-progressive) \
	$(if $(filter 1 yes true,$(PROGRESSIVE)),--progressive) \
	$(if $(ONLY),--only "$(ONLY)") \
	$(if $(API_REPLICAS),--api-replicas $(API_REPLICAS)) \
	$(if $(EXECUTOR),--executor "$(EXECUTOR)") \
	$(if $(CELERY_WORKERS),--celery-workers $(CELERY_WORKERS))

.PHONY: help env up down status test test-fast bench lint

help:
	@sed -n '2,15p' Makefile | sed 's/^# \{0,1\}//'

env:
	@scripts/bootstrap.sh

up: env
	@mkdir -p -m 700 $(XDG_RUNTIME_DIR)
	$(VENV)/bin/ml services up $(SERVICES_UP_ARGS)

down:
	@mkdir -p -m 700 $(XDG_RUNTIME_DIR)
	$(VENV)/bin/ml services down

status:
	@mkdir -p -m 700 $(XDG_RUNTIME_DIR)
	@$(VENV)/bin/ml services status

# pytest exit 5 = no tests collected: a failure here (the suite must not silently vanish)
test: env
	@mkdir -p -m 700 $(XDG_RUNTIME_DIR)
	@rc=0; $(VENV)/bin/pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected NO tests (exit 5) - treated as a failure" >&2; fi; \
	exit $$rc

# the unit tests need no service: DATABASE_URL is dropped so that none is reached by mistake; the wall
# time is printed (the promise is under two minutes)
test-fast: env
	@mkdir -p -m 700 $(XDG_RUNTIME_DIR)
	@start=$$(date +%s); rc=0; env -u DATABASE_URL -u TEST_DATABASE_URL $(VENV)/bin/pytest tests/unit $(PYTEST_ARGS) || rc=$$?; \
	echo "make test-fast: $$(( $$(date +%s) - start ))s"; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: pytest collected NO tests (exit 5) - treated as a failure" >&2; fi; \
	exit $$rc

bench: env
	@shopt -s nullglob; files=(); for f in benchmarks/[!_]*.py; do [ "$$f" = benchmarks/soak.py ] || files+=("$$f"); done; \
	if [ $${#files[@]} -eq 0 ]; then echo "make bench: no benchmarks/*.py yet" >&2; exit 1; fi; \
	for f in "$${files[@]}"; do echo "== $$f"; $(PY) "$$f" || exit $$?; done

lint: env
	$(VENV)/bin/ruff check ml api dags plugins tests benchmarks
	$(VENV)/bin/ruff format --check ml api dags plugins tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
