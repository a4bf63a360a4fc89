# Two commands do all the set-up on a fresh machine:
#   make demo   simulate a case of the example CT, register it with the shipped model, print mTRE
#   make test   the test suite (what CI runs through .ci/run)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch and torchvision must be a matched pair; --isolated skips any local CPU-only torch wheel
# that a machine's pip config points at (it has no matching torchvision). The CUDA build runs on CPUs.
# --no-cache-dir: the CUDA wheels are about 3 GB; a pip cache would hold them a second time on disk.
TORCH := torch==2.15.0 torchvision==0.29.2
PIP := $(PY) -m pip install --isolated --no-cache-dir -q
# The venv holds about 6 GB (torch's CUDA build); the downloads need about 3 GB more while installing.
NEED_GB := 10

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	@free=$$(df -Pk $(dir $(abspath $(VENV))) | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ "$$free" -lt $(NEED_GB) ]; then \
	  echo "make setup: $$free GB free in $(dir $(abspath $(VENV))), the venv needs about $(NEED_GB) GB (torch's CUDA build); free some space and run it again" >&2; \
	  exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) $(TORCH)
	$(PIP) -e ".[test]"
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
