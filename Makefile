# Two entry points from a fresh clone: `make demo` and `make test`.
# Both build .venv on first use (python3 -m venv + pip install -e '.[test]').
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint pytest bench clean

$(BIN)/ppn: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

demo: $(BIN)/ppn
	$(BIN)/ppn demo

lint: $(BIN)/ppn
	$(BIN)/ruff check --output-format concise genesis ppn psp tests interop benchmarks examples
	$(BIN)/mypy

pytest: $(BIN)/ppn
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test: lint pytest

bench: $(BIN)/ppn
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
