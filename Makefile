# The two commands of the README:
#   make dashboard   set up, then start the dashboard on ./gradwatch.db (or $GRADWATCH_DB)
#   make test        set up, then lint and run every test (what .ci/run calls)
# Only Python 3.11 is needed beforehand; everything else is installed here.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: dashboard test lint venv bench browser clean device-wheels

$(STAMP): requirements/base.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements/base.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

$(BENCH_STAMP): $(STAMP) requirements/bench.lock
	$(BIN)/pip install --quiet -r requirements/bench.lock
	touch $(BENCH_STAMP)

# Debian's chromium for the real-browser test (never `playwright install`: no downloads at run time).
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi; }

# DB reaches the shell as a variable, unexpanded by make ($(value)) and unsplit by the shell ("$$..."): a path
# with spaces, quotes or a $ opens the file it names.
dashboard: export GRADWATCH_MAKE_DB = $(value DB)
dashboard: $(STAMP)
	$(BIN)/streamlit run dashboard $(if $(value DB),-- --db "$$GRADWATCH_MAKE_DB")

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) browser lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/peers.py
	$(BIN)/python benchmarks/tracker_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info

# Wheels for benchmarks/device_check.sh: what the lent GPU machine's image (Python 3.12, torch, no network)
# lacks to import the tracker. Pure-Python wheels, versions from the lock file.
device-wheels:
	python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux2014_x86_64 -d .whl \
	  $$(grep -E '^(sqlite-utils|sqlite-fts4|click-default-group)==' requirements/base.lock)
