# Set-up and entry points. `make train` and `make test` create .venv on first use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Without CUDA, pin the CPU wheel of torch (a plain `torch` would pull a multi-GB CUDA build).
# On a GPU machine the default torch from the index is used; override with `make install TORCH=...`.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
PYTEST_ARGS ?= -n 2 --timeout 600

.PHONY: install train test test-slow bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) -m lco.train $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest $(PYTEST_ARGS) -m slow

bench: install        # writes experiments/bench/results.md and results.json on this machine
	$(PY) -m lco.bench $(ARGS)

clean:
	rm -rf logs outputs multirun .pytest_cache
