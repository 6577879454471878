# fedforge: the two commands are `make demo` and `make test` (README.md).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: venv demo test lint unit clean bench bench-quick

$(BIN)/fedforge: pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need Python 3.11 ($(PY))"; exit 2; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: a looser requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(BIN)/fedforge

venv: $(BIN)/fedforge

demo: venv
	$(BIN)/fedforge data fetch fraud
	$(BIN)/fedforge demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -ra -n 2 --dist loadgroup

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (benchmarks/README.md): `make bench` writes benchmarks/results.md; `make bench-quick`
# runs every script at toy sizes (make test runs it through tests/benchmarks) so none rots.
BENCH_SCRIPTS = $(sort $(basename $(notdir $(wildcard benchmarks/bench_*.py))))

bench: venv
	rm -rf benchmarks/results
	@set -e; for s in $(BENCH_SCRIPTS); do echo "== $$s"; $(BIN)/python -m benchmarks.$$s; done
	$(BIN)/python -m benchmarks.report

bench-quick: venv
	@set -e; out=$$(mktemp -d); for s in $(BENCH_SCRIPTS); do echo "== $$s"; $(BIN)/python -m benchmarks.$$s --quick --out $$out; done; rm -rf $$out
