# The two set-up commands: `make serve` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
export OPENSCI_HOME ?= $(CURDIR)/var
export OPENSCI_BASE_URL ?= http://$(HOST):$(PORT)

.PHONY: serve test test-sqlite test-postgresql lint system-deps slurm bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.server: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[server]'
	touch $@

$(VENV)/.test: $(VENV)/.server
	$(BIN)/pip install -q -e '.[server,test]'
	touch $@

## Create .venv, install, migrate, seed the demo and serve on http://$(HOST):$(PORT)
serve: $(VENV)/.server
	$(BIN)/opensci db upgrade
	$(BIN)/opensci demo seed
	@echo "OpenSci on http://$(HOST):$(PORT)  (demo login: admin / opensci-demo)"
	$(BIN)/opensci serve --host $(HOST) --port $(PORT)

system-deps:
	./scripts/install-system-deps.sh

## A real single-node Slurm for the compute tests (as root, when slurm-wlm is installed); else they skip
slurm: system-deps
	@if [ "$$(id -u)" = 0 ] && [ -x /usr/sbin/slurmctld ]; then \
	  ./scripts/slurm-up.sh || echo "Slurm did not come up: its tests skip (and fail under CI=true)" >&2; \
	else echo "not starting Slurm (needs root and slurm-wlm): its tests skip" >&2; fi

lint: $(VENV)/.test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

## Install what the tests need and run every test, against SQLite and against PostgreSQL
test: $(VENV)/.test system-deps slurm lint
	$(MAKE) --no-print-directory test-sqlite
	$(MAKE) --no-print-directory test-postgresql

test-sqlite: $(VENV)/.test
	OPENSCI_TEST_DB=sqlite $(BIN)/pytest -n 2 --dist loadfile $(PYTEST_ARGS)

test-postgresql: $(VENV)/.test
	OPENSCI_TEST_DB=postgresql $(BIN)/pytest -n 2 --dist loadfile $(PYTEST_ARGS)

bench: $(VENV)/.test
	$(BIN)/python benchmarks/api_latency.py
	$(BIN)/python benchmarks/git_clone.py
	$(BIN)/python benchmarks/storage_throughput.py
	$(BIN)/python benchmarks/large_files.py
	$(BIN)/python benchmarks/data_first_rows.py
	$(BIN)/python benchmarks/data_sql.py
	$(BIN)/python benchmarks/compute_local.py
	$(BIN)/python benchmarks/compute_slurm.py

clean:
	rm -rf $(VENV) var .pytest_cache
