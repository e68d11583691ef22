# Two commands do all the set-up: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install system demo test test-fast lint format docs bench cmake-args clean

install: $(STAMP)

# llama.cpp compiles for this CPU (-march=native), with its own thread pool rather than OpenMP:
# torch ships the same libgomp.so.1, so in one process both share one OpenMP runtime. Once torch
# has run parallel work on one thread and llama.cpp decodes on another (hearth serve's scheduler),
# that runtime counts more threads than cores and all but stops spinning at its barriers: every
# llama.cpp step sleeps and wakes its threads hundreds of times, and the batched engine decoded
# 2.9x slower once the embedder had run (benchmarks/bench_threads.py).
# Not with AMX either: its AMX kernels crash on the packaged model's Q4_1 weights (SIGSEGV in
# ggml_backend_amx_mul_mat, llama-cpp-python 0.3.36, on any prompt of a few hundred tokens).
# Where the CPU has AMX, the build names each vector extension the CPU has instead. The wheel
# cache is skipped: it is keyed by version, not by these flags, and may hold an OpenMP build.
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
GGML_FEATURES := AVX:avx AVX2:avx2 FMA:fma F16C:f16c BMI2:bmi2 AVX_VNNI:avx_vnni \
	AVX512:avx512f AVX512_VBMI:avx512vbmi AVX512_VNNI:avx512_vnni AVX512_BF16:avx512_bf16
ifneq ($(filter amx_int8 amx_tile,$(CPU_FLAGS)),)
NO_AMX := -DGGML_NATIVE=OFF $(foreach f,$(GGML_FEATURES),\
	-DGGML_$(word 1,$(subst :, ,$(f)))=$(if $(filter $(word 2,$(subst :, ,$(f))),$(CPU_FLAGS)),ON,OFF))
endif
# Flags of your own in CMAKE_ARGS (CUDA, say) replace the CPU flags; the thread pool stays.
export CMAKE_ARGS := $(or $(CMAKE_ARGS),$(NO_AMX)) -DGGML_OPENMP=OFF
export OPENMP_CHECK := import llama_cpp, sys; sys.exit(b"OPENMP = 1" in llama_cpp.llama_print_system_info())
LLAMA_CPP := $(shell sed -n 's/.*"\(llama-cpp-python[^"]*\)".*/\1/p' pyproject.toml | head -1)

# The CPU build of torch goes in first, so that no dependency pulls the multi-GB CUDA build.
# An environment made before the thread-pool build has its llama-cpp-python rebuilt.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-cache-dir '$(LLAMA_CPP)'
	$(BIN)/python -c "$$OPENMP_CHECK" || $(BIN)/python -m pip install --quiet --no-cache-dir \
		--force-reinstall --no-deps '$(LLAMA_CPP)'
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,openvino,scale]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hearth demo

# The web chat's tests drive Debian's Chromium (Playwright cannot download its own browser here);
# the shared index's tests start a real PostgreSQL from Debian's package.
SYSTEM_PACKAGES = chromium postgresql
system:
	@command -v chromium >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES))

test: $(STAMP) system
	$(BIN)/python -m pytest

# The edit-test loop: everything but the tests marked slow (real model, training, processes).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# The documentation site builds with --strict: a broken link, a missing page or a reference that
# does not resolve fails the lint (its examples run in tests/test_docs.py).
lint: $(STAMP)
	$(BIN)/ruff check hearthlm tests benchmarks examples docs/hooks.py
	$(BIN)/ruff format --check hearthlm tests benchmarks examples docs/hooks.py
	$(BIN)/mypy hearthlm
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir .mkdocs-site
	rm -rf .mkdocs-site

format: $(STAMP)
	$(BIN)/ruff check --fix hearthlm tests benchmarks examples docs/hooks.py
	$(BIN)/ruff format hearthlm tests benchmarks examples docs/hooks.py

# The documentation site at http://127.0.0.1:8000, rebuilt as you edit.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b --quick || exit 1; done

# The flags llama.cpp is built with here (benchmarks/bench_serve.py builds llama-server with them).
cmake-args:
	@echo $(CMAKE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
