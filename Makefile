# imagepipe: `make run` starts the whole local stack; `make test` runs every suite.
# Both install what they need first (into .venv/), so a fresh machine needs nothing else.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
CHAOS_ARGS ?= --uploads 200 --seconds 60

.PHONY: install tus-js-client vendor chromium run up down test test-fast chaos bench bench-quick lint format clean

install: $(STAMP) tus-js-client

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,heif]'
	touch $(STAMP)

run: $(STAMP) tus-js-client
	$(BIN)/imagepipe dev

# The page's resumable uploads use tus-js-client from the npm registry, pinned (version, the
# tarball's integrity, the file's sha256) in its .pin file. The file is committed, so a fresh
# machine needs no npm: `make install` checks it is the pinned release byte for byte and,
# when it is not, `make vendor` fetches that release again (npm pack, integrity checked).
STATIC  := imagepipe/api/static
TUS_PIN := $(STATIC)/tus-js-client.pin
pin = $(shell awk '$$1 == "$(1)" {print $$2}' $(TUS_PIN))

tus-js-client:
	@echo "$(call pin,sha256)  $(STATIC)/tus.min.js" | sha256sum -c --quiet - 2>/dev/null \
		|| $(MAKE) vendor

vendor:
	rm -rf $(VENV)/vendor && mkdir -p $(VENV)/vendor
	cd $(VENV)/vendor && npm pack --silent $(call pin,package)@$(call pin,version)
	test "sha512-$$(openssl dgst -sha512 -binary $(VENV)/vendor/*.tgz | base64 -w0)" \
		= "$(call pin,integrity)"
	tar -xzf $(VENV)/vendor/*.tgz -C $(VENV)/vendor package/$(call pin,file) package/LICENSE
	echo "$(call pin,sha256)  $(VENV)/vendor/package/$(call pin,file)" | sha256sum -c --quiet -
	cp $(VENV)/vendor/package/$(call pin,file) $(STATIC)/tus.min.js
	cp $(VENV)/vendor/package/LICENSE $(STATIC)/tus-js-client.LICENSE

# the same stack in Docker (Valkey, MinIO, api, worker, replicator); needs only Docker
up:
	docker compose -f docker/compose.yaml up -d --build

down:
	docker compose -f docker/compose.yaml down

# The browser suite drives Debian's chromium (no browser download works here): installed when
# it is missing and we are root, as in CI. Elsewhere that suite skips, saying how to get it,
# as the disk-full test does without root.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq chromium) \
			|| echo "make: chromium did not install: the browser tests cannot run"; \
	fi

test: $(STAMP) tus-js-client chromium
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/pytest -m "not e2e and not faults and not browser" $(PYTEST_ARGS)

# uploads while roles are killed at random and backup flaps; prints the invariant table
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

# every row of the benchmark table beside its anchors; rewrites BENCHMARKS.md (several minutes).
# Real photos join row 1 from IMAGEPIPE_CORPUS, by default ../shared/testdata where it exists.
bench: $(STAMP)
	IMAGEPIPE_CORPUS="$${IMAGEPIPE_CORPUS-$(abspath $(wildcard ../shared/testdata))}" \
		$(BIN)/python -m bench

# the same rows on small inputs (about a minute, writes nothing): CI runs it so bench/ cannot rot
bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

lint: $(STAMP)
	$(BIN)/ruff check imagepipe tests bench examples
	$(BIN)/ruff format --check imagepipe tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format imagepipe tests bench examples
	$(BIN)/ruff check --fix imagepipe tests bench examples

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
