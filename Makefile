# Thin wrapper: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint types unit bench sim clean deb

# The exact versions of constraints.txt: what CI tests is what the Debian package and a constrained pip install get.
$(STAMP): pyproject.toml constraints.txt
	.ci/ensure-system-packages python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --constraint constraints.txt -e '.[test,demo]'
	touch $(STAMP)

venv: $(STAMP)

## demo: simulators + embedded MQTT broker + gateway, with a live view (Ctrl-C stops everything)
demo: $(STAMP)
	$(BIN)/cellgate demo

# Test processes (pytest-xdist). Most tests wait on real processes and sockets, so more workers than cores pay;
# --dist loadfile keeps a file's tests (and its module fixtures: one broker, one simulator set) in one worker;
# --no-loadscope-reorder hands files out in collection order (tests/conftest.py: longest first), not by test count.
# Tests marked `serial` assert a bound in seconds: they run alone afterwards, on a machine the others no longer load.
PYTEST_WORKERS ?= 4

## test: lint, types and the whole test suite (installs Mosquitto, socat, Node.js + node-opcua, promtool, Chromium, sqlite3 when missing;
##       as root also the Debian package tools for tests/package)
test: $(STAMP)
	.ci/ensure-system-packages mosquitto mosquitto-clients socat nodejs npm prometheus chromium sqlite3
	cd tests/interop && npm ci --no-audit --no-fund --loglevel=error
	# tests/package installs the .deb it builds, so it runs as root only (CI); it needs the build tools then.
	if [ "$$(id -u)" -eq 0 ]; then .ci/ensure-system-packages $(DEB_BUILD_PACKAGES); fi
	$(BIN)/ruff check gateway simulators tests $(wildcard benchmarks)
	$(BIN)/mypy gateway simulators
	# Exit status 5 is "nothing selected" (PYTEST_ARGS naming files with no serial test, or only serial ones).
	$(BIN)/pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -m 'not serial' $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/pytest -q -p no:cacheprovider -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: $(STAMP)
	$(BIN)/ruff check gateway simulators tests $(wildcard benchmarks)

types: $(STAMP)
	$(BIN)/mypy gateway simulators

## bench: every benchmark scenario in both modes (options: make bench BENCH_ARGS="--scenario hall --scale 0.5");
##        one summary line per run, JSON in benchmarks/results/. See `python benchmarks/run.py --help`.
bench: $(STAMP)
	.ci/ensure-system-packages mosquitto
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

## deb: build/deb/cellgate_{version}_{arch}.deb, the gateway in its own virtualenv under /opt/cellgate/venv
##      (dh-virtualenv; the exact versions of constraints.txt). Built from a copy of the working tree.
DEB_BUILD_PACKAGES := dpkg-dev debhelper dh-virtualenv lintian python3-venv
DEB_DIR       ?= build/deb
PIP_CACHE_DIR ?= $(HOME)/.cache/pip
DEB_COMPRESSION ?= xz
deb:
	.ci/ensure-system-packages $(DEB_BUILD_PACKAGES)
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/src
	git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C $(DEB_DIR)/src
	cd $(DEB_DIR)/src && PIP_CACHE_DIR=$(abspath $(PIP_CACHE_DIR)) DEB_COMPRESSION=$(DEB_COMPRESSION) \
	    dpkg-buildpackage -b -us -uc
	rm -rf $(DEB_DIR)/src
	@ls $(DEB_DIR)/*.deb

sim: $(STAMP)
	$(BIN)/cellgate sim

clean:
	rm -rf $(VENV) build/deb .pytest_cache .mypy_cache .ruff_cache .hypothesis tests/interop/node_modules
