# streamrec: `make run` (the whole loop on this machine) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# the one torch pin (the CPU wheel here; the Dockerfile's TORCH_VERSION must equal it, a test checks)
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install test unit integration lint run bench down status clean system-packages

## install: create .venv and install streamrec (editable, dev extra, CPU torch). Idempotent.
install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==$(TORCH_VERSION)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# Debian packages the integration tests use: kcat (an independent Kafka client for the broker tests),
# redis-server (the GCS fault-tolerance test) and chromium (the dashboard page in a headless browser).
# Best effort: a test says why it skips without them.
APT_PACKAGES := kcat:kcat redis-server:redis-server chromium:chromium
system-packages:
	@for pair in $(APT_PACKAGES); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { timeout 180 apt-get install -y -qq $$pkg >/dev/null 2>&1 || \
	      { timeout 180 apt-get update -qq >/dev/null 2>&1 && timeout 180 apt-get install -y -qq $$pkg >/dev/null 2>&1; }; }; } || true; \
	done

## test: install if needed, then run the whole suite (unit, then integration).
test: install system-packages
	$(PY) -m pytest tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff check --select F,E9 --line-length 130 streamrec rl actors serve cluster bench tests

unit: install
	$(PY) -m pytest tests/unit

integration: install system-packages
	$(PY) -m pytest tests/integration

## run: the whole loop in the foreground with simulated users; Ctrl-C stops everything.
run: install
	$(VENV)/bin/streamrec up --simulate

down: install
	$(VENV)/bin/streamrec down

status: install
	$(VENV)/bin/streamrec status

## bench: every benchmark, one JSON line each.
bench: install
	@for b in bench/*.py; do case $$b in */__init__.py|*/_*.py|*/bare_server.py) continue;; esac; $(PY) -m bench.$$(basename $$b .py) || exit $$?; done

clean:
	rm -rf $(VENV) .streamrec *.egg-info
