# lorafleet: `make demo` runs the whole loop on the embedded default model; `make test` runs the tests.
# Both install what is missing first (scripts/setup.sh), and only when its inputs changed.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lorafleet-setup
# Tools the set-up put into the venv (kubectl where the system has none) come first.
export PATH := $(abspath $(VENV))/bin:$(PATH)
SETUP_INPUTS := pyproject.toml scripts/setup.sh requirements/engine-cpu.lock requirements/engine-nodeps.txt requirements/dev.lock

.PHONY: setup demo test test-fast lint typecheck bench clean

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	LORAFLEET_VENV=$(VENV) scripts/setup.sh full
	@touch $@

demo: $(STAMP)
	$(PY) -m lorafleet.demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not engine and not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/train_throughput.py
	$(PY) bench/gateway_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
