# LesionLens: two commands for a new user — `make demo` and `make test`. Both are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lesionlens-installed
SYSTEM_TOOLS := storescu findscu dsrdump dciodvfy pdftoppm pdftotext chromium Orthanc
APT_PACKAGES := dcmtk dicom3tools poppler-utils chromium orthanc orthanc-dicomweb

.PHONY: setup sysdeps demo test bench train-default clean

setup: sysdeps $(STAMP)

# Debian packages the tests use (real DICOM tools). Installed only when missing and when run as root.
sysdeps:
	@missing=0; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $(APT_PACKAGES)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	  else \
	    echo "note: $(APT_PACKAGES) missing and not root; tests that need them will be skipped"; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "LesionLens needs Python >= 3.11"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v 'is ignored' || true
	$(PY) -m pip install -q torch==2.13.0 2>&1 | grep -v 'is ignored' || true
	$(PY) -m pip install -q -e '.[all,dev]' 2>&1 | grep -v 'is ignored' || true
	$(PY) -c 'import lesionlens, torch, pydicom, highdicom, pynetdicom, onnxruntime'
	@touch $@

demo: setup
	$(VENV)/bin/lesionlens demo

test: setup
	$(PY) -m pytest -q -n 2 -p no:cacheprovider

# the reproducible recipe of the shipped default model (about 1 h on a 2-core CPU)
train-default: setup
	$(VENV)/bin/lesionlens train --recipe default --out runs/default-recipe

# trains or runs the detector over many phantoms (15-45 min): run by hand, commands in the docs
LONG_BENCH = bench/bench_ablation.py bench/bench_rescorer.py bench/bench_patchnet.py

bench: setup
	@for b in $(filter-out $(LONG_BENCH),$(wildcard bench/*.py)); do echo "== $$b"; $(PY) $$b || exit 1; done
	@echo "not run (long; see docs/models.md and docs/detection.md): $(LONG_BENCH)"

clean:
	rm -rf $(VENV) build .pytest_cache
