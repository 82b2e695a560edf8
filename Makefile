# The project's interface: every target installs what it needs first (idempotent, fast when done).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
CDK := node_modules/.bin/cdk
MODEL ?=
CDK_CONTEXT := $(if $(MODEL),-c model=$(MODEL),)
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export PYTHONPATH := $(CURDIR)/lambda_src:$(CURDIR)

.PHONY: help install test lint unit synth synth-offline package deploy destroy preflight cost pin local ingest \
        models bench bench-baseline e2e clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt lambda_src/requirements.txt lambda_src/requirements-forwarder.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

install: $(VENV)/.installed node_modules/.installed ## install Python (.venv) and the pinned CDK CLI

lint: $(VENV)/.installed ## ruff + mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: install ## the test suite only
	$(PY) -m pytest -q

synth-offline: install ## cdk synth through the pinned CLI with no network and no credentials
	env -u AWS_PROFILE -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY AWS_EC2_METADATA_DISABLED=true \
	  unshare -rn $(CDK) synth --quiet --no-notices --no-version-reporting $(CDK_CONTEXT) \
	  -c bundle=false -o build/cdk.out.offline

test: install lint unit synth-offline ## lint, every test, and an offline synth

synth: install ## write the CloudFormation templates to cdk.out (no bundling: templates only)
	$(CDK) synth --quiet --no-notices $(CDK_CONTEXT) -c bundle=false
	@echo "templates in cdk.out/ (Lambda and model assets are bundled by make package / make deploy)"

package: install models ## synth with the real Lambda bundles and the model asset (needs PyPI)
	$(CDK) synth --quiet --no-notices $(CDK_CONTEXT)

models: install ## download the pinned embedding and reranker models (Hugging Face Hub)
	$(PY) -m tools.fetch_models

preflight: install ## check quota, model access and fit, Qdrant before a deploy
	$(PY) -m tools.preflight $(if $(MODEL),--model $(MODEL),)

deploy: install models ## preflight, then deploy every stack (SKIP_PREFLIGHT=1 to bypass)
	@if [ -z "$(SKIP_PREFLIGHT)" ]; then $(MAKE) --no-print-directory preflight; fi
	$(CDK) deploy --all --require-approval never --no-notices $(CDK_CONTEXT) --outputs-file build/outputs.json
	@$(PY) -m tools.print_outputs build/outputs.json

destroy: install ## remove every stack, the GPU endpoint first, then verify nothing billable remains
	$(CDK) destroy --force --no-notices $(CDK_CONTEXT) "$$($(PY) -m tools.stack_names endpoint)"
	$(CDK) destroy --all --force --no-notices $(CDK_CONTEXT)
	$(PY) -m tools.verify_destroyed

cost: install ## estimated hourly and monthly cost of the configured model
	$(PY) -m tools.cost $(if $(MODEL),--model $(MODEL),)

pin: install ## resolve the model's hf_revision branch to a commit SHA in its YAML
	$(PY) -m tools.pin_revision --model $(or $(MODEL),$$($(PY) -m tools.stack_names model))

clean: ## remove build outputs (keeps .venv and node_modules)
	rm -rf cdk.out build .pytest_cache .mypy_cache .ruff_cache
