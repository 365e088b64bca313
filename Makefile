# One command to run the stack, one to test it. Everything installs itself on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install system-deps run test lint fmt bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/ikiro stack

# Debian's chromium (browser tests) and node (the client library's own tests), installed if missing.
system-deps:
	devtools/system-deps.sh

test: $(STAMP) system-deps
	node --test web/miniapp-client/test/
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check shared services devtools tests benchmarks soak
	$(VENV)/bin/ruff format --check shared services devtools tests benchmarks soak
	$(VENV)/bin/mypy

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix shared services devtools tests benchmarks soak
	$(VENV)/bin/ruff format shared services devtools tests benchmarks soak

bench: $(STAMP)
	$(PY) -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
include deploy/k8s.mk

# Chaos under load on a real 3-node NATS cluster (about 2 minutes; soak/README.md says what it
# proves). The short version for CI: $(PY) -m soak --duration 25
.PHONY: soak
soak: $(STAMP)
	$(PY) -m soak
