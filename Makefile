# Two commands for a new machine:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch 2.13.0's CPU build lies on this kind of machine's disk; a bare `torch`
# requirement would pull a multi-GB CUDA build instead.
TORCH ?= torch==2.13.0

.PHONY: setup test test-unit demo demo-quick lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	# llama-cpp-python builds from source here (~8.5 min on 2 cores); pip caches the wheel.
	$(PIP) install -q -e '.[train,dev]'
	touch $@

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

test-unit: setup
	$(VENV)/bin/pytest -q -m "not integration"

demo: setup
	$(VENV)/bin/slmforge demo

demo-quick: setup
	$(VENV)/bin/slmforge demo --quick

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
