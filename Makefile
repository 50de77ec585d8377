# Two entry points from a fresh clone: `make demo` and `make test`.
# Both build .venv on first use (python3 -m venv + pip install -e '.[test]').
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint pytest bench clean test-kernel

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

# Kernel WireGuard: boots a Debian kernel under qemu (virtme-ng) and runs tests/kernel/ inside
# (interop/kernel_vm.py). Needs qemu-system-x86, busybox-static and linux-image-amd64 (.ci/run
# installs them); skips without them unless PPN_REQUIRE_KERNEL=1.
VNG_VERSION := 1.42
$(VENV)/vng/bin/vng: | $(BIN)/ppn
	$(BIN)/python -m venv $(VENV)/vng
	$(VENV)/vng/bin/pip install -q 'virtme-ng==$(VNG_VERSION)'

test-kernel: $(BIN)/ppn $(VENV)/vng/bin/vng
	$(BIN)/python -m interop.kernel_vm $(if $(PYTEST_ARGS),-- $(PYTEST_ARGS))

bench: $(BIN)/ppn
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
