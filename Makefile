# Two entry points (see README): `make repro` runs the pipeline, `make test` runs the tests.
# Both create the virtual environment on first use and reinstall when the pins change.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed

export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

repro: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest -n 2 tests

clean-venv:
	rm -rf $(VENV)
