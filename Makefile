# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (lint, then the suite).
# Each creates the virtual environment it needs on first use.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.peft-scaffold-installed
PYTEST_WORKERS ?= 2

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: a bare `torch` (or an open range) pulls the CUDA build, several GB
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/peft-scaffold demo

test: lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q

lint: $(STAMP)
	$(VENV)/bin/ruff check scaffold tests
	$(VENV)/bin/ruff format --check scaffold tests
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/bench_generate.py

clean:
	rm -rf $(VENV) peft-scaffold-demo
