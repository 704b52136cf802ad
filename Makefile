# Every target sets up its own virtual environment in .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test soak corpus bench lint format typecheck all clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Run the whole service on the embedded defaults and grade sample emails.
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest

# Not part of make test: each runs for minutes and prints figures.
soak: $(STAMP)
	$(BIN)/python scripts/soak.py

corpus: $(STAMP)
	$(BIN)/python scripts/compare_extractors.py
	$(BIN)/python scripts/corpus_pipeline.py

bench: $(STAMP)
	$(BIN)/python scripts/bench.py

lint: $(STAMP)
	$(BIN)/ruff check peb_mail tests scripts

format: $(STAMP)
	$(BIN)/ruff format peb_mail tests scripts

typecheck: $(STAMP)
	$(BIN)/pip install --quiet mypy
	$(BIN)/mypy peb_mail

all: lint test

clean:
	rm -rf $(VENV) demo-data var .pytest_cache .ruff_cache .mypy_cache
