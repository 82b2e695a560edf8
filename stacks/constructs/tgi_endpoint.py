"""A Hugging Face TGI (or vLLM, by config) model on a SageMaker real-time endpoint, hosted as an
inference component.

Inference components let one config switch choose between an always-on endpoint and one that
scales to zero instances when idle (DESIGN 4). Names are derived from the config, not from
CloudFormation tokens, so other stacks can address the endpoint without a cross-stack export
(which would otherwise force the API stack to be destroyed before the GPU).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from aws_cdk import ArnFormat, CfnMapping, Duration, RemovalPolicy, Stack
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sagemaker as sagemaker
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from stacks import tgi_image
from stacks.config import ModelConfig
from stacks.nag import acknowledge, rendered

VARIANT_NAME = "AllTraffic"
LOG_RETENTION = logs.RetentionDays.ONE_MONTH
# Scaling out of zero: one NoCapacityInvocationFailures datapoint within a minute adds a copy.
NO_CAPACITY_PERIOD = Duration.minutes(1)
ALWAYS_ON_TARGET_METRIC = appscaling.PredefinedMetric.SAGEMAKER_INFERENCE_COMPONENT_CONCURRENT_REQUESTS_PER_COPY_HIGH_RESOLUTION
# AWS's documented scale-to-zero setup tracks invocations per copy (SageMaker developer guide,
# "Scale an endpoint to zero instances"): with no traffic it reaches zero copies.
SCALE_TO_ZERO_TARGET_METRIC = (
    appscaling.PredefinedMetric.SAGEMAKER_INFERENCE_COMPONENT_INVOCATIONS_PER_COPY
)


def resource_name(*parts: str, max_len: int = 63) -> str:
    """A SageMaker-safe name: alphanumerics and hyphens, at most 63 characters."""
    name = re.sub(r"[^a-zA-Z0-9]+", "-", "-".join(parts)).strip("-").lower()
    return name[:max_len].rstrip("-")


@dataclass(frozen=True)
class TgiEndpointRef:
    """The endpoint as other stacks see it: names derived from the config, ARNs formatted in the
    caller's stack (no cross-stack export, so the GPU stack can be destroyed first)."""

    endpoint_name: str
    inference_component_name: str

    @classmethod
    def for_model(cls, config: ModelConfig, project: str) -> TgiEndpointRef:
        return cls(
            endpoint_name=resource_name(project, config.name),
            inference_component_name=resource_name(project, config.name, "ic"),
        )

    @property
    def log_group_name(self) -> str:
        """Where the TGI container's logs go: containers hosted as an inference component log to
        the component's group; such an endpoint gets no `/aws/sagemaker/Endpoints/` group."""
        return f"/aws/sagemaker/InferenceComponents/{self.inference_component_name}"

    def arns(self, scope: Construct) -> list[str]:
        stack = Stack.of(scope)
        return [
            stack.format_arn(
                service="sagemaker", resource="endpoint", resource_name=self.endpoint_name
            ),
            stack.format_arn(
                service="sagemaker",
                resource="inference-component",
                resource_name=self.inference_component_name,
            ),
        ]

    def grant_invoke(self, grantee: iam.IGrantable) -> iam.Grant:
        """Allow invoking exactly this endpoint's inference component."""
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["sagemaker:InvokeEndpoint"],
            resource_arns=self.arns(_construct(grantee)),
        )


def _construct(grantee: iam.IGrantable) -> Construct:
    if not isinstance(grantee, Construct):
        raise TypeError(
            "grant_invoke needs a construct (e.g. a Function) to format ARNs in its stack"
        )
    return grantee


class TgiEndpoint(Construct):
    """TGI container + endpoint config + endpoint + inference component + its scaling."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: ModelConfig,
        project: str,
        release_when_idle: bool = False,
    ):
        """`release_when_idle`: an always-on endpoint whose idle guard may set its copies to zero
        (stacks.constructs.cost_guard): the instance must then be releasable, and a request
        must bring a copy back, exactly as in scale_to_zero mode."""
        super().__init__(scope, construct_id)
        self.config = config
        self.can_reach_zero = config.scaling.mode == "scale_to_zero" or release_when_idle
        self.ref = TgiEndpointRef.for_model(config, project)
        self.endpoint_name = self.ref.endpoint_name
        self.inference_component_name = self.ref.inference_component_name

        image = self._image_uri(config.engine_version, config.image_framework)
        self.log_group = log_group = logs.LogGroup(
            self,
            "Logs",
            log_group_name=self.ref.log_group_name,
            retention=LOG_RETENTION,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.role = self._execution_role(config, log_group)

        environment = config.container_environment()
        if config.hf_token_secret_name:
            # A CloudFormation dynamic reference: the template holds the secret's name only;
            # CloudFormation resolves it when it creates the model.
            token = secretsmanager.Secret.from_secret_name_v2(
                self, "HfToken", config.hf_token_secret_name
            )
            environment["HF_TOKEN"] = token.secret_value.unsafe_unwrap()

        model = sagemaker.CfnModel(
            self,
            "Model",
            execution_role_arn=self.role.role_arn,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=image, environment=environment, model_data_source=self._staged_weights()
            ),
        )
        # SageMaker checks the role can pull the image when it creates the model: policy first.
        policy = self.role.node.find_child("DefaultPolicy")
        model.node.add_dependency(policy)

        scaling = config.scaling
        endpoint_config = sagemaker.CfnEndpointConfig(
            self,
            "EndpointConfig",
            execution_role_arn=self.role.role_arn,
            production_variants=[
                sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                    variant_name=VARIANT_NAME,
                    instance_type=config.instance_type,
                    initial_instance_count=max(1, scaling.effective_min_copies),
                    managed_instance_scaling=sagemaker.CfnEndpointConfig.ManagedInstanceScalingProperty(
                        status="ENABLED",
                        min_instance_count=0
                        if self.can_reach_zero
                        else scaling.effective_min_copies,
                        max_instance_count=scaling.max_copies,
                    ),
                    routing_config=sagemaker.CfnEndpointConfig.RoutingConfigProperty(
                        routing_strategy="LEAST_OUTSTANDING_REQUESTS"
                    ),
                    container_startup_health_check_timeout_in_seconds=config.startup_health_check_timeout_s,
                    model_data_download_timeout_in_seconds=config.model_download_timeout_s,
                )
            ],
        )
        endpoint_config.node.add_dependency(policy)

        endpoint = sagemaker.CfnEndpoint(
            self,
            "Endpoint",
            endpoint_name=self.endpoint_name,
            endpoint_config_name=endpoint_config.attr_endpoint_config_name,
        )

        component = sagemaker.CfnInferenceComponent(
            self,
            "InferenceComponent",
            inference_component_name=self.inference_component_name,
            endpoint_name=endpoint.attr_endpoint_name,
            variant_name=VARIANT_NAME,
            specification=sagemaker.CfnInferenceComponent.InferenceComponentSpecificationProperty(
                model_name=model.attr_model_name,
                compute_resource_requirements=sagemaker.CfnInferenceComponent.InferenceComponentComputeResourceRequirementsProperty(
                    number_of_accelerator_devices_required=config.gpus,
                    number_of_cpu_cores_required=config.cpu_cores,
                    min_memory_required_in_mb=config.memory_mib,
                ),
                startup_parameters=sagemaker.CfnInferenceComponent.InferenceComponentStartupParametersProperty(
                    container_startup_health_check_timeout_in_seconds=config.startup_health_check_timeout_s,
                    model_data_download_timeout_in_seconds=config.model_download_timeout_s,
                ),
            ),
            runtime_config=sagemaker.CfnInferenceComponent.InferenceComponentRuntimeConfigProperty(
                # Created with one copy even when it may scale to zero: the first deploy proves
                # the model loads, and auto scaling releases the GPU after the idle period.
                copy_count=max(1, scaling.effective_min_copies)
            ),
        )
        component.node.add_dependency(log_group)
        self._scaling(component)

    def _image_uri(self, version: str, framework: str) -> str:
        stack = Stack.of(self)
        uris = tgi_image.regional_image_uris(version, framework)
        # lazy: a pinned region resolves at synth to a plain string; an environment-agnostic
        # stack gets a region -> image mapping resolved by CloudFormation at deploy.
        mapping = CfnMapping(
            self,
            "ContainerImage",
            mapping={
                region: {"uri": uri, "account": tgi_image.registry_account(uri)}
                for region, uri in uris.items()
            },
            lazy=True,
        )
        self._image_account = mapping.find_in_map(stack.region, "account")
        self._image_repository = tgi_image.repository_name(next(iter(uris.values())))
        return mapping.find_in_map(stack.region, "uri")

    def _execution_role(self, config: ModelConfig, log_group: logs.LogGroup) -> iam.Role:
        role = iam.Role(
            self,
            "ExecutionRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description=f"{config.engine} container of {self.endpoint_name}: pull its image, "
            "write its logs",
        )
        repository_arn = Stack.of(self).format_arn(
            service="ecr",
            account=self._image_account,
            resource="repository",
            resource_name=self._image_repository,
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "ecr:BatchCheckLayerAvailability",
                    "ecr:BatchGetImage",
                    "ecr:GetDownloadUrlForLayer",
                ],
                resources=[repository_arn],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"])
        )
        # The CloudWatch Logs actions SageMaker documents for CreateModel execution roles
        # (CreateLogGroup included: the group exists already, so the call is a harmless no-op),
        # scoped to the inference component's own group instead of "*".
        role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "logs:CreateLogGroup",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                    "logs:DescribeLogStreams",
                ],
                resources=[log_group.log_group_arn, f"{log_group.log_group_arn}:log-stream:*"],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={
                    "StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*", "AWS/SageMaker"]}
                },
            )
        )
        return role

    def _staged_weights(self) -> sagemaker.CfnModel.ModelDataSourceProperty | None:
        """Weights copied to S3 by `make stage-weights`: SageMaker puts every object under the
        prefix into /opt/ml/model before TGI starts; the role may read that prefix only."""
        prefix = self.config.weights_s3_prefix
        if prefix is None:
            return None
        parts = urlsplit(prefix)
        bucket, key_prefix = parts.netloc, parts.path.lstrip("/")
        stack = Stack.of(self)
        objects = stack.format_arn(
            service="s3",
            region="",
            account="",
            resource=bucket,
            resource_name=f"{key_prefix}*",
            arn_format=ArnFormat.SLASH_RESOURCE_NAME,
        )
        self.role.add_to_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=[objects]))
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[stack.format_arn(service="s3", region="", account="", resource=bucket)],
                conditions={"StringLike": {"s3:prefix": [f"{key_prefix}*"]}},
            )
        )
        acknowledge(
            self.role.node.find_child("DefaultPolicy"),
            f"AwsSolutions-IAM5[Resource::{rendered(self, objects)}]",
            "SageMaker copies every object under the staged weights' prefix (one model at one "
            "commit, file names chosen by the Hub repo) into the container; nothing else.",
        )
        return sagemaker.CfnModel.ModelDataSourceProperty(
            s3_data_source=sagemaker.CfnModel.S3DataSourceProperty(
                s3_uri=prefix, s3_data_type="S3Prefix", compression_type="None"
            )
        )

    def _scaling(self, component: sagemaker.CfnInferenceComponent) -> None:
        scaling = self.config.scaling
        target = appscaling.ScalableTarget(
            self,
            "CopyCount",
            service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
            resource_id=f"inference-component/{self.inference_component_name}",
            scalable_dimension="sagemaker:inference-component:DesiredCopyCount",
            min_capacity=scaling.effective_min_copies,
            max_capacity=scaling.max_copies,
        )
        target.node.add_dependency(component)
        if scaling.mode == "scale_to_zero":
            name, metric = "InvocationsPerCopy", SCALE_TO_ZERO_TARGET_METRIC
            target_value = scaling.target_invocations_per_copy_per_minute
        else:
            name, metric = "ConcurrentRequestsPerCopy", ALWAYS_ON_TARGET_METRIC
            target_value = scaling.target_concurrent_requests_per_copy
        target.scale_to_track_metric(
            name,
            target_value=target_value,
            predefined_metric=metric,
            scale_in_cooldown=Duration.seconds(scaling.scale_in_cooldown_s),
            scale_out_cooldown=Duration.seconds(scaling.scale_out_cooldown_s),
        )
        self.scalable_target = target
        if not self.can_reach_zero:
            return
        # At zero copies target tracking has no per-copy metric to act on; requests that find
        # no capacity are counted instead, and one of them is enough to bring a copy back.
        no_capacity = cloudwatch.Metric(
            namespace="AWS/SageMaker",
            metric_name="NoCapacityInvocationFailures",
            dimensions_map={"InferenceComponentName": self.inference_component_name},
            statistic="Maximum",
            period=NO_CAPACITY_PERIOD,
        )
        step = appscaling.StepScalingAction(
            self,
            "ScaleOutFromZero",
            scaling_target=target,
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            cooldown=Duration.seconds(scaling.scale_out_cooldown_s),
            metric_aggregation_type=appscaling.MetricAggregationType.MAXIMUM,
        )
        step.add_adjustment(adjustment=1, lower_bound=0)
        alarm = cloudwatch.Alarm(
            self,
            "NoCapacityAlarm",
            alarm_description=f"Requests to {self.inference_component_name} found no copy: scale out of zero",
            metric=no_capacity,
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(cloudwatch_actions.ApplicationScalingAction(step))
        self.no_capacity_alarm = alarm

    def grant_invoke(self, grantee: iam.IGrantable) -> iam.Grant:
        return self.ref.grant_invoke(grantee)
