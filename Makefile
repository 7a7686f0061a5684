# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv/ itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test unit integration lint bench faults kafka-start kafka-stop clean duckdb-compat-env

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: install
	$(BIN)/cutline demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: install
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/pytest -q tests/integration

test: install lint
	$(BIN)/pytest -q tests

# Seeded fault injection (kills, stalls, rebalances, zombies) with every backup checked;
# SOAK=1 runs every scenario for FAULTS_SECONDS (default 300). One summary line on stdout.
faults: install
	SOAK=$(SOAK) $(BIN)/python -m tests.faults

bench: install
	@$(BIN)/python -m bench

# DuckDB 1.1.3 in its own venv under ~/.cache/cutline (or $$CUTLINE_CACHE): the tests open
# backups with it. Built once; the tests build it too if it is missing.
duckdb-compat-env: install
	$(BIN)/python -m tests.integration.old_duckdb

kafka-start: install
	$(BIN)/cutline kafka start

kafka-stop: install
	$(BIN)/cutline kafka stop

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache demo-data
