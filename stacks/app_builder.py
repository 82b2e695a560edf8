"""Everything `app.py` does, as a function tests can call with their own context."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import Tags, Validations
from cdk_nag import AwsSolutionsChecks

from stacks.config import DeploymentConfig, load_deployment_config, load_model_config
from stacks.endpoint_stack import LlmEndpointStack


def _environment(app: cdk.App) -> cdk.Environment | None:
    """A pinned account/region from context; environment-agnostic when absent."""
    account = app.node.try_get_context("account")
    region = app.node.try_get_context("region")
    if account is None and region is None:
        return None
    return cdk.Environment(account=account, region=region)


def build_app(app: cdk.App) -> dict[str, cdk.Stack]:
    deployment: DeploymentConfig = load_deployment_config(_context(app))
    model = load_model_config(deployment.model)
    env = _environment(app)

    endpoint = LlmEndpointStack(
        app,
        deployment.stack_name("endpoint"),
        model=model,
        deployment=deployment,
        env=env,
        description=f"{deployment.project}: {model.hf_model_id} on TGI {model.tgi_version}, "
        f"{model.instance_type} (SageMaker inference component)",
    )
    stacks: dict[str, cdk.Stack] = {"endpoint": endpoint}

    Tags.of(app).add("project", deployment.project)
    Tags.of(app).add("model", model.name)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return stacks


def _context(app: cdk.App) -> dict[str, object]:
    return {key: app.node.try_get_context(key) for key in DeploymentConfig.model_fields}
