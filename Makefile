# Two commands for a new user (see README.md):
#   make demo   set up .venv and run the R-CNN pipeline on the built-in shapes data
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup demo test
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/rcnn pipeline --out runs/demo

test: setup
	$(BIN)/python -m pytest
