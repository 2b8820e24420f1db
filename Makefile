# Set-up and entry points. `make train` and `make test` create .venv on first use, from requirements.lock.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock
# torch is the one package the lock leaves out: its build differs per machine (CPU wheel vs CUDA build, each with
# its own dependencies), so the lock is resolved against the CPU wheel and torch is pinned here by version.
# With `nvidia-smi` pip takes the index's default build of that version (CUDA on Linux); without it, the CPU wheel
# where pip finds one (here: its find-links). Elsewhere: make install TORCH_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_VERSION := 2.13.0
TORCH ?= torch==$(TORCH_VERSION)
TORCH_ARGS ?=
# Where `make lock` finds the CPU wheel of torch, whose dependencies (no CUDA libraries) the lock holds.
TORCH_CPU_LINKS ?= $(if $(wildcard /opt/wheels/torch-$(TORCH_VERSION)+cpu-*),/opt/wheels,https://download.pytorch.org/whl/cpu/torch/)
LOCK_PYTHON ?= 3.11
PYTEST_ARGS ?= -n 2 --timeout 600

.PHONY: install lock train test test-slow test-latest test-vision bench clean

# Exactly the lock (hash-checked, no resolver), then torch, then lco itself without dependencies; `pip check`
# proves the set is consistent. The lock's sha256 is printed and kept beside the environment.
$(VENV)/.installed: $(LOCK) pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet $(foreach r,$(TORCH),"$(r)") $(TORCH_ARGS)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	sha256sum $(LOCK) | cut -d' ' -f1 > $(VENV)/lock.sha256
	@echo "lco: installed $(LOCK) sha256 $$(cat $(VENV)/lock.sha256) with $$($(PY) -c 'import torch; print("torch", torch.__version__)')"
	touch $@

install: $(VENV)/.installed

# Re-resolve the lock from pyproject's ranges (newest allowed versions, runtime + dev, hashes for every wheel).
lock: install
	$(PY) -m uv pip compile pyproject.toml --extra dev --python-version $(LOCK_PYTHON) --python-platform linux \
	    --generate-hashes --no-emit-package torch --find-links $(TORCH_CPU_LINKS) --no-emit-find-links \
	    --constraint <(echo "torch==$(TORCH_VERSION)") --custom-compile-command "make lock" --quiet -o $(LOCK)
	@echo "lco: wrote $(LOCK) sha256 $$(sha256sum $(LOCK) | cut -d' ' -f1); run make install to use it"

train: install
	$(PY) -m lco.train $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest $(PYTEST_ARGS) -m slow

# The newest versions pyproject allows, in a separate environment, so an upstream break is found on purpose.
# It lists where that environment differs from the lock, then runs the same tests.
test-latest:
	rm -rf .venv-latest && python3 -m venv .venv-latest
	.venv-latest/bin/pip install --quiet $(foreach r,$(TORCH),"$(r)") $(TORCH_ARGS) -e ".[dev]"
	.venv-latest/bin/python -m lco.provenance --diff-lock $(LOCK)
	LCO_TEST_LATEST=1 .venv-latest/bin/python -m pytest $(PYTEST_ARGS)

# Users of the Qwen VL/Omni families have torchvision, and transformers then builds their real processors; CI's CPU
# torch has no torchvision that imports, so `make test` runs lco's own assembly of them. This profile installs the
# lock with a torch/torchvision pair that imports (here a CUDA build of torch 2.14.1 from local disk, ~5.5 GB) and
# runs the tests that compare the two, and the export/multimodal tests, which then load the real processors.
VISION_TORCH ?= torch==2.14.1 torchvision==0.29.1
test-vision:
	$(MAKE) install VENV=.venv-vision TORCH="$(VISION_TORCH)"
	.venv-vision/bin/python -m pytest $(PYTEST_ARGS) -m "vision or not slow" tests/test_vision.py \
	    tests/test_export.py tests/test_multimodal.py

bench: install        # writes experiments/bench/results.md and results.json on this machine
	$(PY) -m lco.bench $(ARGS)

clean:
	rm -rf logs outputs multirun .pytest_cache
