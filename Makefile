# kidresearch: two commands from a fresh clone on Python 3.11
#   make demo   install into .venv, build a synthetic KID, run the main report batch
#   make test   install into .venv if needed, run the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   ?= demo_data
SEED   ?= 20261126
PYTEST_ARGS ?=

.PHONY: demo test lint format lab clean install docs bench

$(BIN)/kid: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: install Python 3.11 or run 'make PYTHON=python3 ...'"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,spark]"
	@touch $(BIN)/kid

install: $(BIN)/kid

demo: $(BIN)/kid
	$(BIN)/kid demo --out $(DEMO) --seed $(SEED)

test: $(BIN)/kid
	# Two xdist workers on two cores: one BLAS thread each, or small solves oversubscribe the CPU.
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: $(BIN)/kid
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/kid
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

docs: $(BIN)/kid
	$(BIN)/kid docs --out docs/data_dictionary.md

lab: $(BIN)/kid
	$(BIN)/python -m ipykernel install --sys-prefix --name kidresearch --display-name "Python (kidresearch)"
	KID_DATA=$(abspath $(DEMO))/kid $(BIN)/jupyter lab --notebook-dir=notebooks $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

bench: $(BIN)/kid
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(DEMO) reports .pytest_cache
