# Two targets do all the set-up from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.slmforge-installed

.PHONY: setup demo test lint clean-venv

setup: $(STAMP)

# torch goes first, pinned, so pip takes the CPU build on this machine instead of CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[all,dev]"
	# the eval report test opens report.html in Debian's chromium (browsers cannot be downloaded)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	touch $(STAMP)

demo: setup
	bash examples/demo.sh

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	CI=$${CI:-} $(BIN)/python -m pytest -n 2 -q --durations=15

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

clean-venv:
	rm -rf $(VENV)
