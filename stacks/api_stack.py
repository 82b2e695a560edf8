"""The fast-changing part: API, business Lambda, trace pipeline, monitoring, cost guard.

It addresses the endpoint by its config-derived names, not through a cross-stack export, so the
endpoint stack (the GPU) can be destroyed first and redeployed without touching this one.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from stacks.config import DeploymentConfig, ModelConfig
from stacks.constructs.cost_guard import CostGuard
from stacks.constructs.monitoring import MonitoredParts, Monitoring, TraceParts
from stacks.constructs.rag_api import RagApi
from stacks.constructs.tgi_endpoint import TgiEndpointRef
from stacks.constructs.trace_pipeline import TracePipeline
from stacks.constructs.vpc_access import LambdaVpcAccess


class RagApiStack(Stack):
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
        endpoint = TgiEndpointRef.for_model(model, deployment.project)
        vpc = (
            ec2.Vpc.from_lookup(self, "Vpc", vpc_id=deployment.vpc_id)
            if deployment.vpc_id
            else None
        )
        if vpc is not None and deployment.vpc_endpoints:
            LambdaVpcAccess(self, "VpcAccess", vpc=vpc, sends_traces=deployment.traces_enabled)
        traces = (
            TracePipeline(self, "Traces", deployment=deployment)
            if deployment.traces_enabled
            else None
        )
        rag = RagApi(
            self,
            "Rag",
            endpoint=endpoint,
            model=model,
            deployment=deployment,
            trace_queue=traces.queue if traces else None,
            vpc=vpc,
        )
        if traces is not None:  # with traces off nothing is sent, so there is nothing to key
            traces.grant_redaction_key(rag.business.function)
        monitoring = Monitoring(
            self,
            "Monitoring",
            parts=MonitoredParts(
                api=rag.api,
                business=rag.business.function,
                endpoint=endpoint,
                traces=TraceParts(
                    forwarder=traces.forwarder.function,
                    queue=traces.queue,
                    dead_letter_queue=traces.dead_letter_queue,
                )
                if traces
                else None,
            ),
            deployment=deployment,
        )
        CostGuard(
            self,
            "CostGuard",
            endpoint_name=endpoint.endpoint_name,
            inference_component_name=endpoint.inference_component_name,
            config=model,
            deployment=deployment,
            topic=monitoring.topic,
        )

        CfnOutput(self, "ApiUrl", value=rag.api.url)
        CfnOutput(self, "ApiKeyId", value=rag.api_key.key_id)
        CfnOutput(
            self,
            "ApiKeyCommand",
            value=f"aws apigateway get-api-key --api-key {rag.api_key.key_id} --include-value "
            f"--query value --output text --region {self.region}",
        )
        CfnOutput(self, "FunctionName", value=rag.business.function.function_name)
        CfnOutput(self, "QdrantApiKeySecret", value=rag.qdrant.secret.secret_name)
        CfnOutput(self, "ModelLogGroup", value=endpoint.log_group_name)
        if traces is None:
            CfnOutput(
                self,
                "Traces",
                value="off: no opik_api_key_secret_name in the cdk context, so no trace queue "
                "or forwarder is deployed and requests send no traces",
            )
        else:
            CfnOutput(self, "TraceQueueUrl", value=traces.queue.queue_url)
            CfnOutput(
                self,
                "TraceRedriveCommand",
                value=f"python -m tools.redrive_traces --dlq-arn {traces.dead_letter_queue.queue_arn} "
                f"--region {self.region}",
            )
        CfnOutput(self, "AlarmTopicArn", value=monitoring.topic.topic_arn)
