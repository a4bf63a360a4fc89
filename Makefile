# Two commands do all the set-up on a fresh machine:
#   make demo   simulate a case of the example CT, register it with the shipped model, print mTRE
#   make test   the test suite (what CI runs through .ci/run)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch and torchvision must be a matched pair; --isolated skips any local CPU-only torch wheel
# that a machine's pip config points at (it has no matching torchvision). The CUDA build runs on CPUs.
TORCH := torch==2.15.0 torchvision==0.29.2

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --isolated -q --upgrade pip
	$(PY) -m pip install --isolated -q $(TORCH)
	$(PY) -m pip install --isolated -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sphericalreg demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_render.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
