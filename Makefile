# Two commands matter: `make serve` (the service on the bundled model) and `make test` (the whole suite).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
MODEL ?= models/ptb-cpu
HOST ?= 127.0.0.1
PORT ?= 8000
PTB_DATA_DIR ?= ../shared/data/ptb
export PTB_DATA_DIR

.PHONY: install serve test unit integration clients e2e docker-test k8s-validate ray-test wheels lint format mutate train-small eval-small gpu-dry-run clean

install: $(VENV)/.installed

# torch first, pinned exactly: the CPU build; a looser request can pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

serve: install
	$(PY) -m service --model $(MODEL) --host $(HOST) --port $(PORT)

# The whole suite: unit tests, the curl-based integration tests against a locally started server, the clients
# people already use (the OpenAI SDK, lm-eval) against a real server, the web page in a headless browser, and
# the Kubernetes manifests rendered and validated.
test: unit integration clients e2e k8s-validate

unit: install
	$(PY) -m pytest -q

integration: install
	PY=$(PY) tests/integration/local.sh $(MODEL)

# The OpenAI SDK and lm-eval (offline, on task files the tests write) against `python -m service`.
clients: install
	$(PY) -m pytest -q tests/clients

# Debian's Chromium, driven by Playwright; installed here when missing (as root, as on the build machines).
e2e: install
	@command -v chromium >/dev/null || { echo "installing chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	$(PY) -m pytest -q tests/e2e

# Images built, compose stack up and healthy, integration tests against it, scale-out check, torn down.
docker-test:
	PY=$(PYTHON) docker/test-stack.sh

# deploy/kubernetes: every kustomization rendered and each object validated against Kubernetes' schemas
# (installs kubectl and kubernetes-validate when missing).
k8s-validate: install
	PY=$(PY) deploy/kubernetes/validate.sh

# deploy/ray: the Ray Serve deployment on a two-node local Ray cluster in a private network namespace
# (installs the `ray` extra into the virtual environment; needs root for the namespace).
ray-test: install
	PY=$(PY) deploy/ray/test-cluster.sh

# The venv's pip builds the wheels: made first in a fresh clone.
wheels: install
	PYTHON=$(PY) docker/airgap/make-wheelhouse.sh

LINT := lm trainer service tests benchmarks deploy docker tools
lint: install
	$(VENV)/bin/ruff check $(LINT)
	$(VENV)/bin/ruff format --check $(LINT)

format: install
	$(VENV)/bin/ruff format $(LINT)
	$(VENV)/bin/ruff check --fix $(LINT)

# One-line breaks of the core rules (tools/mutations.py), each against its own tests, on a copy of the tree:
# every one must be killed (docs/mutation.md). Slow, so not in `make test` or CI; a unit test keeps the list
# in step with the code.
mutate: install
	$(PY) tools/mutate.py

train-small: install
	$(PY) -m trainer train --config small --data-dir $(PTB_DATA_DIR) --out models/ptb-small

eval-small: install
	$(PY) -m trainer eval --model models/ptb-small --data-dir $(PTB_DATA_DIR) --split all

# benchmarks/gpu.sh end to end on the CPU with tiny settings (the GPU runs: docs/gpu.md).
gpu-dry-run: install
	PY=$(PY) benchmarks/gpu.sh --dry-run --data $(PTB_DATA_DIR) --work runs/gpu-dry-run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
