# imagepipe: `make run` starts the whole local stack; `make test` runs every suite.
# Both install what they need first (into .venv/), so a fresh machine needs nothing else.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
CHAOS_ARGS ?= --uploads 200 --seconds 60

.PHONY: install run up down test test-fast chaos lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/imagepipe dev

# the same stack in Docker (Valkey, MinIO, api, worker, replicator); needs only Docker
up:
	docker compose -f docker/compose.yaml up -d --build

down:
	docker compose -f docker/compose.yaml down

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/pytest -m "not e2e and not faults and not browser" $(PYTEST_ARGS)

# uploads while roles are killed at random and backup flaps; prints the invariant table
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check imagepipe tests
	$(BIN)/ruff format --check imagepipe tests
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format imagepipe tests
	$(BIN)/ruff check --fix imagepipe tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
