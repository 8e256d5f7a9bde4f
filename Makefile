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

## test: lint, types and the whole test suite (installs Mosquitto and socat when missing and possible)
test: $(STAMP)
	.ci/ensure-system-packages mosquitto mosquitto-clients socat
	$(BIN)/ruff check gateway simulators tests $(wildcard benchmarks)
	$(BIN)/mypy gateway simulators
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gateway simulators tests $(wildcard benchmarks)

types: $(STAMP)
	$(BIN)/mypy gateway simulators

## bench: benchmarks that print JSON (so far: load-50k, tag-map load + plan)
bench: $(STAMP)
	$(BIN)/python benchmarks/load_plan.py

sim: $(STAMP)
	$(BIN)/cellgate sim

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
