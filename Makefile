# The README's commands. Every target creates what it needs (the venv, generated code).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= .borealis
PROTOS := $(wildcard proto/*.proto)

.PHONY: install system-deps proto up down status test test-all test-unit test-fault soak bench lint clean
# Debian packages the tests and benchmarks drive: psql (postgresql-client-15), pgbench
# and a PostgreSQL 15 server to compare with (postgresql-15). Installed when missing.
PG_BIN := /usr/lib/postgresql/15/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(MAKE) --no-print-directory proto
	touch $(STAMP)

system-deps:
	@if ! command -v psql >/dev/null || ! test -x $(PG_BIN)/pgbench || ! test -x $(PG_BIN)/postgres; then \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y postgresql-client-15 postgresql-15; \
	fi

# Regenerates the protobuf and gRPC modules next to their .proto files.
proto:
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)

up: install
	$(BIN)/borealis up --data-dir $(DATA_DIR)

down:
	@if [ -x $(BIN)/borealis ]; then $(BIN)/borealis down --data-dir $(DATA_DIR); fi

status: install
	$(BIN)/borealis status --data-dir $(DATA_DIR)

# CI's command (.ci/run): everything but the tests marked slow, under 15 minutes on 2 cores.
test: install system-deps
	$(BIN)/pytest -q -m "not slow"

# Every test, the slow ones too.
test-all: install system-deps
	$(BIN)/pytest -q

test-unit: install
	$(BIN)/pytest -q -m unit

# The fault-injection runs alone (make test runs them too, with a few seeds).
test-fault: install system-deps
	$(BIN)/pytest -q -s -m fault tests/fault

# A longer soak: random faults from the seed for SOAK_S seconds
# (BOREALIS_FAULT_SEED=S replays one seed).
SOAK_S ?= 600
soak: install system-deps
	BOREALIS_SOAK_S=$(SOAK_S) $(BIN)/pytest -q -s -m fault tests/fault -k soak

bench: install system-deps
	$(BIN)/python bench/storage_append.py --quick
	$(BIN)/python bench/engine_commit.py --quick
	$(BIN)/python bench/pgbench_compare.py --quick
	$(BIN)/python bench/replica_lag.py --quick
	$(BIN)/python bench/failover.py --quick
	$(BIN)/python bench/autoscale.py --quick

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean: down
	rm -rf $(VENV) $(DATA_DIR) *.egg-info
