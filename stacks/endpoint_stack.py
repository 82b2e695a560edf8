"""The slow, costly part: the GPU endpoint. Its own stack so the API can change without it."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from stacks.config import DeploymentConfig, ModelConfig
from stacks.constructs.tgi_endpoint import TgiEndpoint
from stacks.endpoint_encryption import protect_endpoint_storage
from stacks.nag import acknowledge, rendered


class LlmEndpointStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        model: ModelConfig,
        deployment: DeploymentConfig,
        **kwargs: Any,
    ):
        super().__init__(scope, construct_id, **kwargs)
        self.endpoint = TgiEndpoint(
            self,
            "Tgi",
            config=model,
            project=deployment.project,
            release_when_idle=deployment.idle_scale_to_zero,
        )

        CfnOutput(self, "EndpointName", value=self.endpoint.endpoint_name)
        CfnOutput(self, "InferenceComponentName", value=self.endpoint.inference_component_name)
        CfnOutput(self, "Region", value=self.region)

        _acknowledge(self.endpoint)
        protect_endpoint_storage(
            self.endpoint.node.find_child("EndpointConfig"), instance_type=model.instance_type
        )


def _acknowledge(endpoint: TgiEndpoint) -> None:
    policy = endpoint.role.node.find_child("DefaultPolicy")
    acknowledge(
        policy,
        "AwsSolutions-IAM5[Resource::*]",
        (
            "ecr:GetAuthorizationToken has no resource-level permission (it must be '*'); "
            "cloudwatch:PutMetricData has none either and is limited to SageMaker namespaces "
            "by a condition. Image pulls are scoped to the TGI repository ARN."
        ),
    )
    acknowledge(
        policy,
        f"AwsSolutions-IAM5[Resource::{rendered(endpoint, f'{endpoint.log_group.log_group_arn}:log-stream:*')}]",
        "Log streams are created by the container at run time inside this endpoint's own log group.",
    )
