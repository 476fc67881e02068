# Two entry points (see README): `make repro` runs the pipeline, `make test` runs the tests.
# Both create the virtual environment on first use and reinstall when the pins change.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed

export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro repro-real test clean-venv chromium vega

setup: $(STAMP) chromium vega

# Headless Chromium (Debian package) for the report's browser test (tests/test_report.py); playwright
# drives this system binary, it never downloads a browser of its own.
CHROMIUM ?= /usr/bin/chromium
SUDO     := $(shell test "$$(id -u)" = 0 || echo sudo)

chromium:
	@test -x $(CHROMIUM) || { echo "installing chromium (apt-get)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Vega, Vega-Lite and vega-embed (npm registry, pinned) for `cxr plots show|diff`: DVC's own plots page loads them
# from a CDN and renders blank offline. Installed once at setup into the venv; never fetched at run time.
VEGA_DIR      := $(VENV)/share/vega
VEGA_PACKAGES := vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0

vega: $(VEGA_DIR)/.installed

$(VEGA_DIR)/.installed: Makefile
	@command -v npm >/dev/null || { echo "installing npm (apt-get)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; }
	rm -rf $(VEGA_DIR).tmp && mkdir -p $(VEGA_DIR).tmp
	cd $(VEGA_DIR).tmp && npm pack --silent $(VEGA_PACKAGES) >/dev/null && \
	  for t in *.tgz; do tar -xzf $$t package/build; cp package/build/vega.min.js package/build/vega-lite.min.js \
	    package/build/vega-embed.min.js . 2>/dev/null; rm -rf package $$t; done
	test -s $(VEGA_DIR).tmp/vega.min.js && test -s $(VEGA_DIR).tmp/vega-lite.min.js && test -s $(VEGA_DIR).tmp/vega-embed.min.js
	rm -rf $(VEGA_DIR) && mv $(VEGA_DIR).tmp $(VEGA_DIR) && touch $@

$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

repro: setup
	$(BIN)/dvc repro
	@git status --porcelain -- dvc.lock reports | grep -q . && \
	  echo 'new results: commit them as the baseline with  git add -A && git commit -m "baseline run"' || true

# The same DAG on real datasets in their native layouts (see params-real.yaml and the README): a DVC
# experiment in the workspace whose params are params.yaml overridden by params-real.yaml.
REAL_DATA ?= ../shared/realdata

repro-real: setup
	$(BIN)/cxr exp-run params-real.yaml -S ingest.source=$(abspath $(REAL_DATA))

test: setup
	$(BIN)/python -m pytest -n 2 tests

clean-venv:
	rm -rf $(VENV)
