# tokenproxy — two commands: `make run` (demo: emulator + proxy) and `make test` (whole suite).
# Everything installs itself: a venv on a Python >= 3.12 found on this machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/demo.toml
PYTEST_WORKERS ?= 3

# Python >= 3.12 (mitmproxy 12): prefer 3.13 (no tight typing-extensions pin), then 3.12;
# look on PATH, then in pyenv's versions folder.
PYTHON ?= $(shell for c in python3.13 python3.12 \
	$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.13*/bin/python3 2>/dev/null | sort -V -r) \
	$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3 2>/dev/null | sort -V -r) \
	/root/.pyenv/versions/3.13*/bin/python3 /root/.pyenv/versions/3.12*/bin/python3 python3; do \
	  p=$$(command -v $$c 2>/dev/null) || continue; \
	  $$p -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null && { echo $$p; break; }; \
	done)

# Debian packages the tests run for real: redis-server (the shared store), redis-sentinel (the
# failover test), prometheus (brings promtool; alert rules are checked and a real Prometheus
# scrapes the proxy), chromium (the status page is loaded in a real headless browser).
TEST_DEBS ?= redis-server redis-sentinel prometheus chromium
# What `make bench` drives: nginx (the static upstream), wrk and hey (load generators),
# redis-server and redis-sentinel (the shared store of scenarios drain and chaos).
BENCH_DEBS ?= nginx wrk hey redis-server redis-sentinel
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help venv debs sdk-js run test lint bench soak clean

help:
	@echo "make run    start the bundled platform emulator and the proxy ($(CONFIG))"
	@echo "make test   lint and run the whole test suite"
	@echo "make lint   ruff and the import-layering contracts"
	@echo "make bench  benchmarks -> docs/benchmarks.md (SCENARIOS='storm fleet' to run some)"
	@echo "make soak   long variants: 1M requests memory run, 500 crash trials per store, chaos"
	@echo "make clean  remove the venv and runtime state"

$(VENV)/.installed: pyproject.toml emulator/pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
	  echo "error: no Python >= 3.12 found (mitmproxy 12 needs it)."; \
	  echo "  looked for python3.13/python3.12 on PATH and in ~/.pyenv/versions/3.1[23]*;"; \
	  echo "  install one (e.g. 'pyenv install 3.13') or run: make PYTHON=/path/to/python3.13 ..."; \
	  exit 1; fi
	@echo "using $(PYTHON) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e ./emulator  # the emulator: dev and demo only
	@touch $@

venv: $(VENV)/.installed

# Installs only what is missing (a package counts as present when its main command is on PATH).
debs:
	@missing=""; for p in $(TEST_DEBS); do \
	  command -v $$p >/dev/null 2>&1 || dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null \
	    || { $(SUDO) apt-get update -q >/dev/null && \
	         $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; } \
	    || { echo "error: could not install$$missing (apt-get)"; exit 1; }; \
	fi

DEMO_KEY := var/demo-store.key

run: venv
	@mkdir -p var
	@[ -s $(DEMO_KEY) ] || (umask 077 && $(BIN)/tokenproxy keygen > $(DEMO_KEY))
	TOKENPROXY_STORE_KEY="$${TOKENPROXY_STORE_KEY:-$$(cat $(DEMO_KEY))}" \
	  $(BIN)/tokenproxy run --config $(CONFIG)

# ruff, then the layering contracts of pyproject.toml's [tool.importlinter] (docs/architecture.md)
lint: venv
	$(BIN)/ruff check proxy_addon tests bench dashboards emulator
	$(BIN)/lint-imports --no-cache

# The official JavaScript SDK, for the SDK end-to-end test (Node.js and npm from Debian if missing).
SDK_JS := tests/sdk/js
$(SDK_JS)/node_modules/.installed: $(SDK_JS)/package-lock.json
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
	  echo "installing Debian packages: nodejs npm"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null; }
	cd $(SDK_JS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

sdk-js: $(SDK_JS)/node_modules/.installed

test: venv debs sdk-js lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -p no:cacheprovider --durations=15 tests

# Benchmarks (not part of `make test`): rewrite docs/benchmarks.md. SCENARIOS="throughput storm"
# runs some; `python -m bench --list` names them.
bench: venv
	@$(MAKE) --no-print-directory debs TEST_DEBS="$(BENCH_DEBS)"
	$(BIN)/python -m bench $(SCENARIOS)

# The long variants: 1M requests for the memory scenario, 500 crash trials per store, the
# 10-minute chaos run (3 replicas on Redis with Sentinel, kill -9 of replicas and of the primary,
# revocations, 300 clients; CHAOS_MINUTES=N to shorten).
CHAOS_MINUTES ?=
soak: venv debs
	@$(MAKE) --no-print-directory debs TEST_DEBS="$(BENCH_DEBS)"
	$(BIN)/python -m bench memory --soak
	$(BIN)/python -m bench.chaos --soak $(if $(CHAOS_MINUTES),--minutes $(CHAOS_MINUTES))
	CRASH_TRIALS=500 $(BIN)/python -m pytest -p no:cacheprovider tests/store/test_crash_safety.py

clean:
	rm -rf $(VENV) var build *.egg-info $(SDK_JS)/node_modules
