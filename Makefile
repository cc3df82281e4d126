# The two commands of the README; CI runs `make test` (see .ci/run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup train test lint bench clean docs notebooks package-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[cli,test,torch,package]"
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

## docs: build the documentation site into site/ (strict: a broken reference, link or anchor,
## or a page loading from another host, fails); the notebooks are executed for their figures
## (MLDS_DOCS_EXECUTE=false skips that; with MLDS_EXECUTED_NOTEBOOKS=DIR it takes their outputs
## from the copies tests/test_notebooks.py executed into DIR, as CI does)
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $@

# The notebooks' kernels draw with the inline backend (CI exports MPLBACKEND=Agg, which would
# leave the pages without figures); NO_MKDOCS_2_WARNING silences mkdocs-material's banner.
docs: $(DOCS_STAMP)
	MPLBACKEND=module://matplotlib_inline.backend_inline NO_MKDOCS_2_WARNING=1 \
		$(BIN)/mkdocs build --strict $(ARGS)

## notebooks: open the tutorial notebooks in JupyterLab (installs the notebooks extra)
NB_STAMP := $(VENV)/.notebooks-installed
$(NB_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[notebooks]"
	touch $@

# (JupyterLab refuses to run as root unless told: containers often are root)
notebooks: $(NB_STAMP)
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root) $(ARGS)

## package-check: build sdist + wheel, install the wheel in a fresh venv, smoke-test it there
package-check: $(STAMP)
	bash .ci/package_check.sh $(BIN)/python

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis site build dist .cache
