# Two commands set up everything on a fresh machine:
#   make demo   -> creates .venv, installs, runs synth -> import -> replay -> verify -> summary
#   make test   -> creates .venv, installs, runs lint, types and the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

CHROMIUM ?= /usr/bin/chromium

.PHONY: venv demo test lint typecheck bench clean browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,ml]'
	touch $(STAMP)

venv: $(STAMP)

# The dashboard's browser tests drive Debian's chromium package (no browser download);
# installed here when missing and possible (root with apt-get), else those tests skip.
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium (apt-get) for the dashboard browser tests"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && \
	      apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } || \
	    echo "note: could not install chromium: the browser tests will skip"; \
	  else echo "note: $(CHROMIUM) missing and not installable here: browser tests skip"; fi; }

demo: $(STAMP)
	$(BIN)/tickerml demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy kernel adapters strategies journal_tools training

test: $(STAMP) browser lint typecheck
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/replay_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
