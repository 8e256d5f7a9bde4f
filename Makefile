# Thin wrapper: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint types unit bench sim clean

$(STAMP): pyproject.toml
	.ci/ensure-system-packages python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,demo]'
	touch $(STAMP)

venv: $(STAMP)

## demo: simulators + embedded MQTT broker + gateway, with a live view (Ctrl-C stops everything)
demo: $(STAMP)
	$(BIN)/cellgate demo

## test: lint, types and the whole test suite (installs Mosquitto, socat, Node.js + node-opcua when missing)
test: $(STAMP)
	.ci/ensure-system-packages mosquitto mosquitto-clients socat nodejs npm
	cd tests/interop && npm ci --no-audit --no-fund --loglevel=error
	$(BIN)/ruff check gateway simulators tests $(wildcard benchmarks)
	$(BIN)/mypy gateway simulators
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gateway simulators tests $(wildcard benchmarks)

types: $(STAMP)
	$(BIN)/mypy gateway simulators

## bench: every benchmark scenario in both modes (options: make bench BENCH_ARGS="--scenario hall --scale 0.5");
##        one summary line per run, JSON in benchmarks/results/. See `python benchmarks/run.py --help`.
bench: $(STAMP)
	.ci/ensure-system-packages mosquitto
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

sim: $(STAMP)
	$(BIN)/cellgate sim

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis tests/interop/node_modules
