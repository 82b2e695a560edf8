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
from stacks.constructs.monitoring import MonitoredParts, Monitoring
from stacks.constructs.rag_api import RagApi
from stacks.constructs.tgi_endpoint import TgiEndpointRef
from stacks.constructs.trace_pipeline import TracePipeline


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
        traces = TracePipeline(self, "Traces", deployment=deployment)
        rag = RagApi(
            self,
            "Rag",
            endpoint=endpoint,
            model=model,
            deployment=deployment,
            trace_queue=traces.queue,
            vpc=vpc,
        )
        traces.grant_redaction_key(rag.business.function)
        monitoring = Monitoring(
            self,
            "Monitoring",
            parts=MonitoredParts(
                api=rag.api,
                business=rag.business.function,
                forwarder=traces.forwarder.function,
                endpoint=endpoint,
                trace_queue=traces.queue,
                dead_letter_queue=traces.dead_letter_queue,
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
        CfnOutput(self, "TraceQueueUrl", value=traces.queue.queue_url)
        CfnOutput(self, "AlarmTopicArn", value=monitoring.topic.topic_arn)
