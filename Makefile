# Two entry points: `make demo` (install + run the synthetic demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cytofm-installed

.PHONY: install demo test test-fast lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev,umap]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores all

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not workflow and not slow_ok"

lint: $(STAMP)
	$(BIN)/ruff check cytofm tests benchmarks workflow/scripts
	$(BIN)/ruff format --check cytofm tests benchmarks workflow/scripts
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

format: $(STAMP)
	$(BIN)/ruff format cytofm tests benchmarks workflow/scripts
	$(BIN)/ruff check --fix cytofm tests benchmarks workflow/scripts
	$(BIN)/snakefmt Snakefile workflow/rules

clean:
	rm -rf results results-test .snakemake
