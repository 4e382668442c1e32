# The two commands of the contract: `make repro` and `make test`. Both set up .venv from nothing first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DS_ACCELERATOR := cpu
# OpenMP threads sleep instead of spinning while waiting: on a shared 2-core machine spinning made steps ~10x slower
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup repro test test-all bench browser lab strip clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

repro: setup
	dvc repro
	@echo "report: reports/index.html"

test: setup
	@[ -x $(CHROMIUM) ] || $(MAKE) --no-print-directory browser >/dev/null 2>&1 || \
	  echo "note: could not install $(CHROMIUM) (needs root or sudo and the package registry), so the report's browser test skips"
	$(VENV)/bin/python -m pytest -m "not slow" -q

test-all: setup
	@[ -x $(CHROMIUM) ] || $(MAKE) --no-print-directory browser >/dev/null 2>&1 || true
	$(VENV)/bin/python -m pytest -q

# Every benchmarks/bench_*.py (data tools, matmul ceiling, sampling, SP, STDiT3, training, VAE) -> reports/bench/*.json
bench: setup
	@mkdir -p reports/bench
	@for f in benchmarks/bench_*.py; do \
	  [ -e "$$f" ] || continue; \
	  echo "== $$f"; $(VENV)/bin/python -m benchmarks.$$(basename $$f .py) || exit 1; \
	done

# Headless Chromium for tests/test_report_browser.py: the Debian package (root or sudo, and the package registry)
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then echo "$$($(CHROMIUM) --version 2>/dev/null)"; else \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	  $$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; fi

lab: setup
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --no-browser --allow-root

strip:
	$(VENV)/bin/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb

clean-venv:
	rm -rf $(VENV)
