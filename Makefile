# Fresh-machine entry points: `make demo` runs the product, `make test` runs the suite.
# Both create (or reuse) the virtual environment in $(VENV).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install demo test lint browser

$(BIN)/defect-glm: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(BIN)/defect-glm

demo: install
	$(BIN)/defect-glm demo

lint: install
	$(BIN)/ruff check .

test: install
	bash scripts/ensure-browser.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q
