# The two commands of the README; CI runs `make test` (see .ci/run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup train test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[cli,test]"
	touch $(STAMP)

setup: $(STAMP)

## train: set up, then train the default MLP on the bundled digits data
train: $(STAMP)
	$(BIN)/mlds-jax train $(ARGS)

## test: set up, lint and type-check the package, then run the whole test suite
test: lint
	$(BIN)/python -m pytest $(ARGS)

## lint: ruff (lint everywhere, format on the package) and pyright on mlds_jax/
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check mlds_jax
	$(BIN)/pyright

## bench: the performance table (benchmarks/README.md)
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
