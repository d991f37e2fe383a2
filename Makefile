# Two commands on a fresh clone (Python 3.11 on PATH, nothing else):
#   make serve   # serving install (no torch) + start the service on 127.0.0.1:8000
#   make test    # full install (CPU torch first, then .[train,dev]) + the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?= -m "not slow"

.PHONY: serve test lint soak fuzz rayservice image clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Serving only: no torch, no transformers.
$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

# torch first, from the CPU wheel, so that nothing later can pull a CUDA build.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[train,dev]"
	touch $@ $(VENV)/.serve-installed

serve: $(VENV)/.serve-installed
	$(BIN)/emotion serve

test: $(VENV)/.dev-installed
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/mypy serve models loadtests

# >= 10,000 hostile requests against a freshly started service (about 5 minutes on 2 cores).
# Ten minutes at half the probed capacity: memory of every process, p99 per minute, errors (issue 12).
soak: $(VENV)/.dev-installed
	$(BIN)/python -m loadtests.soak --out reports/soak --minutes 10

fuzz: $(VENV)/.dev-installed
	$(BIN)/python tools/fuzz_service.py --requests 10000

rayservice:
	$(BIN)/python deploy/render_rayservice.py

# The container image deploy/rayservice.yaml names (root, podman + debootstrap; docs/operations.md).
image:
	deploy/image/build.sh

clean-venv:
	rm -rf $(VENV)
