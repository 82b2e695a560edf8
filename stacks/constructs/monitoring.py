"""One dashboard and the alarms an on-call person needs, all notifying one SNS topic."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from rag.adapters.trace_sinks import METRIC_SEND_FAILED
from rag.observability import METRICS_NAMESPACE
from stacks.config import DeploymentConfig
from stacks.constructs.tgi_endpoint import VARIANT_NAME, TgiEndpointRef

PERIOD = Duration.minutes(5)
API_5XX_RATE = 0.05  # share of requests
API_P99_LATENCY_MS = 25_000  # close to the 29 s gateway timeout
TRACE_AGE_ALARM_S = 15 * 60
GPU_MEMORY_ALARM_PERCENT = 95


def allow_publishing_service(topic: sns.ITopic, service: str) -> None:
    """Let an AWS service publish to `topic` when it is encrypted: SNS needs the publisher to be
    able to use the topic's key (kms:GenerateDataKey*, kms:Decrypt)."""
    if topic.master_key is not None:
        topic.master_key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal(service)],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],  # in a key policy, "*" is this key
            )
        )


@dataclass(frozen=True)
class TraceParts:
    forwarder: lambda_.IFunction
    queue: sqs.IQueue
    dead_letter_queue: sqs.IQueue


@dataclass(frozen=True)
class MonitoredParts:
    api: apigw.RestApi
    business: lambda_.IFunction
    endpoint: TgiEndpointRef
    traces: TraceParts | None
    """None when no trace pipeline is deployed (no Opik configured)."""


class Monitoring(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        parts: MonitoredParts,
        deployment: DeploymentConfig,
    ):
        super().__init__(scope, construct_id)
        # A customer-managed key: the AWS-managed SNS key's policy cannot let CloudWatch (or
        # Budgets, cost_guard) publish, and an unencrypted topic fails AwsSolutions-SNS2.
        self.key = kms.Key(
            self,
            "AlarmsKey",
            description=f"{deployment.project}: encrypts the alarm topic",
            enable_key_rotation=True,
            pending_window=Duration.days(7),
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.topic = sns.Topic(
            self,
            "Alarms",
            topic_name=f"{deployment.project}-alarms",
            enforce_ssl=True,
            master_key=self.key,
        )
        allow_publishing_service(self.topic, "cloudwatch.amazonaws.com")
        if deployment.alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(deployment.alarm_email))
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        action = cloudwatch_actions.SnsAction(self.topic)

        api_name = parts.api.rest_api_name
        api_dims = {"ApiName": api_name}
        count = _metric("AWS/ApiGateway", "Count", api_dims, "Sum")
        errors_5xx = _metric("AWS/ApiGateway", "5XXError", api_dims, "Sum")
        errors_4xx = _metric("AWS/ApiGateway", "4XXError", api_dims, "Sum")
        latency = _metric("AWS/ApiGateway", "Latency", api_dims, "p99")
        component = {"InferenceComponentName": parts.endpoint.inference_component_name}
        endpoint_dims = {"EndpointName": parts.endpoint.endpoint_name, "VariantName": VARIANT_NAME}
        model_latency = _metric("AWS/SageMaker", "ModelLatency", component, "p90")
        invocation_errors = cloudwatch.MathExpression(
            expression="m4 + m5",
            using_metrics={
                "m4": _metric("AWS/SageMaker", "Invocation4XXErrors", component, "Sum"),
                "m5": _metric("AWS/SageMaker", "Invocation5XXErrors", component, "Sum"),
            },
            label="Invocation errors",
            period=PERIOD,
        )
        no_capacity = _metric("AWS/SageMaker", "NoCapacityInvocationFailures", component, "Sum")
        gpu_memory = _metric(
            "/aws/sagemaker/InferenceComponents",
            "GPUMemoryUtilizationNormalized",
            component,
            "Maximum",
        )

        def alarm(
            name: str,
            metric: cloudwatch.IMetric,
            threshold: float,
            description: str,
            comparison: cloudwatch.ComparisonOperator = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            periods: int = 1,
        ) -> None:
            created = cloudwatch.Alarm(
                self,
                name,
                alarm_name=f"{deployment.project}-{name}",
                alarm_description=description,
                metric=metric,
                threshold=threshold,
                evaluation_periods=periods,
                comparison_operator=comparison,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
            created.add_alarm_action(action)
            self.alarms[name] = created

        alarm(
            "api-5xx-rate",
            cloudwatch.MathExpression(
                expression="IF(count > 0, errors / count, 0)",
                using_metrics={"errors": errors_5xx, "count": count},
                period=PERIOD,
            ),
            API_5XX_RATE,
            "More than 5% of API requests failed with 5xx",
        )
        alarm(
            "api-p99-latency",
            latency,
            API_P99_LATENCY_MS,
            "API p99 latency close to the 29 s timeout",
            periods=2,
        )
        alarm(
            "rag-errors", parts.business.metric_errors(period=PERIOD), 5, "Business Lambda errors"
        )
        alarm(
            "rag-throttles",
            parts.business.metric_throttles(period=PERIOD),
            1,
            "Business Lambda throttled",
        )
        alarm(
            "endpoint-invocation-errors",
            invocation_errors,
            5,
            "SageMaker invocation errors (4xx + 5xx)",
        )
        alarm(
            "endpoint-gpu-memory",
            gpu_memory,
            GPU_MEMORY_ALARM_PERCENT,
            "GPU memory near full",
            periods=3,
        )
        trace_widgets: list[cloudwatch.IWidget] = []
        if parts.traces is not None:
            traces = parts.traces
            queue_age = traces.queue.metric_approximate_age_of_oldest_message(period=PERIOD)
            dlq_depth = traces.dead_letter_queue.metric_approximate_number_of_messages_visible(
                period=Duration.minutes(1), statistic="Maximum"
            )
            alarm(
                "forwarder-errors",
                traces.forwarder.metric_errors(period=PERIOD),
                3,
                "Trace forwarder errors",
            )
            alarm(
                "trace-queue-age",
                queue_age,
                TRACE_AGE_ALARM_S,
                "Traces waiting more than 15 min: forwarder stuck",
            )
            alarm(
                "trace-dlq-not-empty",
                dlq_depth,
                1,
                "Trace events in the dead-letter queue: inspect and redrive",
            )
            # Counted by the business Lambda's SQS sink when a trace cannot be queued.
            trace_send_failed = _metric(
                METRICS_NAMESPACE, METRIC_SEND_FAILED, {"service": "rag"}, "Sum"
            )
            alarm(
                "trace-send-failed",
                trace_send_failed,
                1,
                "Traces could not be sent to the trace queue",
            )
            trace_widgets = [
                _graph("Trace queue: oldest message age (s)", [queue_age]),
                _graph("Trace dead-letter queue depth", [dlq_depth]),
                _graph("Traces not queued", [trace_send_failed]),
            ]

        dashboard = cloudwatch.Dashboard(
            self, "Dashboard", dashboard_name=f"{deployment.project}-dashboard"
        )
        duration = parts.business.metric_duration(period=PERIOD, statistic="p99")
        dashboard.add_widgets(
            _graph("API requests and errors", [count, errors_4xx, errors_5xx]),
            _graph("API latency p99 (ms)", [latency]),
            _graph(
                "Business Lambda",
                [
                    parts.business.metric_errors(period=PERIOD),
                    parts.business.metric_throttles(period=PERIOD),
                ],
            ),
            _graph("Business Lambda duration p99 (ms)", [duration]),
        )
        dashboard.add_widgets(
            _graph("Model latency p90 (us)", [model_latency]),
            _graph("Invocation errors", [invocation_errors]),
            _graph("No-capacity failures (scaled to zero)", [no_capacity]),
            _graph("GPU memory (%)", [gpu_memory]),
        )
        dashboard.add_widgets(
            *trace_widgets,
            _graph(
                "Endpoint invocations",
                [_metric("AWS/SageMaker", "Invocations", endpoint_dims, "Sum")],
            ),
        )
        # TGI start-up failures (gated model 401, out of memory) are only in these logs.
        dashboard.add_widgets(
            cloudwatch.LogQueryWidget(
                title=f"Model container logs ({parts.endpoint.log_group_name})",
                log_group_names=[parts.endpoint.log_group_name],
                query_lines=["fields @timestamp, @logStream, @message", "sort @timestamp desc"],
                width=24,
            )
        )
        self.dashboard = dashboard


def _metric(
    namespace: str, name: str, dimensions: dict[str, str], statistic: str
) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=namespace,
        metric_name=name,
        dimensions_map=dimensions,
        statistic=statistic,
        period=PERIOD,
    )


def _graph(title: str, metrics: list[cloudwatch.IMetric]) -> cloudwatch.GraphWidget:
    return cloudwatch.GraphWidget(title=title, left=metrics, width=6)
