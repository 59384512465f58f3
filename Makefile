# The two set-up commands of the README:
#   make run    the example app, end to end on the embedded dev server
#   make test   lint, types, docs and the whole test suite
# Both create their own virtual environment in .venv on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck docs pytest bench clean

$(BIN)/.installed: setup.cfg pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e . -r requirements/dev.txt
	touch $@

run: $(BIN)/.installed
	$(BIN)/python -m example_app

test: lint typecheck docs pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check --no-fix .
	$(BIN)/ruff format --check .
	$(BIN)/codespell flask_qstash tests docs example_app bench README.md CHANGES.rst

typecheck: $(BIN)/.installed
	$(BIN)/mypy

docs: $(BIN)/.installed
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

pytest: $(BIN)/.installed
	$(BIN)/pytest

bench: $(BIN)/.installed
	$(BIN)/python bench/webhook.py
	$(BIN)/python bench/enqueue.py
	$(BIN)/python bench/devserver.py

clean:
	rm -rf $(VENV) docs/_build .pytest_cache .mypy_cache .ruff_cache
