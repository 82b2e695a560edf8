"""Everything `app.py` does, as a function tests can call with their own context."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import Tags, Validations
from cdk_nag import AwsSolutionsChecks

from stacks.api_stack import RagApiStack
from stacks.config import (
    ConfigError,
    DeploymentConfig,
    load_deployment_config,
    load_model_config,
)
from stacks.endpoint_stack import LlmEndpointStack
from stacks.nag_packs import SageMakerEndpointNistChecks


def _environment(app: cdk.App) -> cdk.Environment | None:
    """A pinned account/region from context; environment-agnostic when absent."""
    account = app.node.try_get_context("account")
    region = app.node.try_get_context("region")
    if account is None and region is None:
        return None
    return cdk.Environment(account=account, region=region)


def build_app(app: cdk.App) -> dict[str, cdk.Stack]:
    if str(app.node.try_get_context("bundle")).lower() == "false":
        # Templates only (make synth, tests): no pip, no model download. The CLI forbids users
        # to pass CDK's own `aws:` context, so this app-level switch sets it.
        app.node.set_context("aws:cdk:bundling-stacks", [])
    deployment: DeploymentConfig = load_deployment_config(_context(app))
    model = load_model_config(deployment.model)
    env = _environment(app)
    if deployment.vpc_id and (env is None or not env.account or not env.region):
        # Vpc.from_lookup reads the VPC's subnets from the account at synth time, which an
        # environment-agnostic stack cannot do (CDK would fail with a raw lookup error).
        raise ConfigError(
            "cdk context: key 'vpc_id' needs the stacks pinned to an account and region: add "
            "-c account=<12-digit account id> -c region=<region> (or set them in cdk.json)"
        )

    endpoint = LlmEndpointStack(
        app,
        deployment.stack_name("endpoint"),
        model=model,
        deployment=deployment,
        env=env,
        description=f"{deployment.project}: {model.hf_model_id} on {model.engine} {model.engine_version}, "
        f"{model.instance_type} (SageMaker inference component)",
    )
    api = RagApiStack(
        app,
        deployment.stack_name("api"),
        model=model,
        deployment=deployment,
        env=env,
        description=f"{deployment.project}: RAG API (API Gateway + Lambda), traces to Opik, monitoring",
    )
    stacks: dict[str, cdk.Stack] = {"endpoint": endpoint, "api": api}

    Tags.of(app).add("project", deployment.project)
    Tags.of(app).add("model", model.name)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app), SageMakerEndpointNistChecks(app))
    return stacks


def _context(app: cdk.App) -> dict[str, object]:
    return dict(app.node.get_all_context())
