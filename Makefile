# Two commands matter: `make serve` (the service on the bundled model) and `make test` (the whole suite).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
MODEL ?= models/ptb-cpu
HOST ?= 127.0.0.1
PORT ?= 8000
PTB_DATA_DIR ?= ../shared/data/ptb
export PTB_DATA_DIR

.PHONY: install serve test unit integration e2e docker-test wheels lint format train-small eval-small clean

install: $(VENV)/.installed

# torch first, pinned exactly: the CPU build; a looser request can pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

serve: install
	$(PY) -m service --model $(MODEL) --host $(HOST) --port $(PORT)

# The whole suite: unit tests, the curl-based integration tests against a locally started server, and the
# web page in a headless browser.
test: unit integration e2e

unit: install
	$(PY) -m pytest -q

integration: install
	PY=$(PY) tests/integration/local.sh $(MODEL)

# Debian's Chromium, driven by Playwright; installed here when missing (as root, as on the build machines).
e2e: install
	@command -v chromium >/dev/null || { echo "installing chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	$(PY) -m pytest -q tests/e2e

# Images built, compose stack up and healthy, integration tests against it, scale-out check, torn down.
docker-test:
	PY=$(PYTHON) docker/test-stack.sh

# The venv's pip builds the wheels: made first in a fresh clone.
wheels: install
	PYTHON=$(PY) docker/airgap/make-wheelhouse.sh

lint: install
	$(VENV)/bin/ruff check lm trainer service tests benchmarks
	$(VENV)/bin/ruff format --check lm trainer service tests benchmarks

format: install
	$(VENV)/bin/ruff format lm trainer service tests benchmarks
	$(VENV)/bin/ruff check --fix lm trainer service tests benchmarks

train-small: install
	$(PY) -m trainer train --config small --data-dir $(PTB_DATA_DIR) --out models/ptb-small

eval-small: install
	$(PY) -m trainer eval --model models/ptb-small --data-dir $(PTB_DATA_DIR) --split all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
