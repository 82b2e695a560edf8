"""Every Lambda of the project comes from here: runtime, architecture, logging, tracing, role."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import AssetHashType, Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from rag.observability import METRICS_NAMESPACE
from stacks import web_adapter
from stacks.bundling import LAMBDA_SRC, RUNTIME_PYTHON, PythonBundle
from stacks.config import LambdaArchitecture
from stacks.nag import acknowledge, rendered

# Python 3.13: the newest runtime whose interpreter the build machines have, so bundles ship
# byte code compiled for it (cold start); 3.14 is one constant away once builders have it.
RUNTIME = lambda_.Runtime.PYTHON_3_13
assert RUNTIME.name == f"python{RUNTIME_PYTHON}"
ARCHITECTURES = {a.name: a for a in (lambda_.Architecture.X86_64, lambda_.Architecture.ARM_64)}
"""The setting's value (`lambda_architecture`) -> CDK's architecture of that name."""
ALIAS = "live"
"""With SnapStart, API Gateway calls this alias of the latest published version."""
LOG_RETENTION = logs.RetentionDays.ONE_MONTH
POWERTOOLS_LOG_LEVEL = "INFO"


class PythonFunction(Construct):
    """A Lambda function with its own log group (retention, deleted with the stack) and a role
    that can write only there and send X-Ray traces; everything else is granted by the caller.

    `web_app=True`: the function is a web app behind the Lambda Web Adapter layer (its handler
    is the adapter's run script), streaming its responses; else `handler` is a Python handler.

    `snapstart=True`: Lambda SnapStart on published versions. Each deploy with changed code or
    settings publishes a version (snapshotted after its init) and moves the `live` alias to it;
    callers invoke `invoke_target` (the alias), since $LATEST is never snapshotted."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        function_name: str,
        description: str,
        bundle: PythonBundle,
        handler: str | None = None,
        web_app: bool = False,
        memory_mb: int,
        timeout: Duration,
        environment: Mapping[str, str],
        service_name: str,
        architecture: LambdaArchitecture,
        snapstart: bool = False,
        reserved_concurrency: int | None = None,
        vpc: ec2.IVpc | None = None,
    ):
        super().__init__(scope, construct_id)
        if web_app:
            handler = web_adapter.HANDLER
        if handler is None:
            raise ValueError("give either a Python handler or web_app=True")
        adapter_env = web_adapter.environment(snapstart=snapstart) if web_app else {}
        cpu = ARCHITECTURES[architecture]
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            log_group_name=f"/aws/lambda/{function_name}",
            retention=LOG_RETENTION,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"{function_name}: its own logs and traces; the rest by explicit grants",
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[f"{self.log_group.log_group_arn}:*"],
            )
        )
        if vpc is not None:
            self.role.add_managed_policy(
                iam.ManagedPolicy.from_aws_managed_policy_name(
                    "service-role/AWSLambdaVPCAccessExecutionRole"
                )
            )
        self.function = lambda_.Function(
            self,
            "Function",
            function_name=function_name,
            description=description,
            runtime=RUNTIME,
            architecture=cpu,
            handler=handler,
            layers=[web_adapter.layer(self, cpu)] if web_app else None,
            code=lambda_.Code.from_asset(
                str(LAMBDA_SRC),
                bundling=bundle.options(architecture),
                asset_hash_type=AssetHashType.CUSTOM,
                asset_hash=bundle.fingerprint(architecture),
            ),
            memory_size=memory_mb,
            timeout=timeout,
            environment={
                "POWERTOOLS_SERVICE_NAME": service_name,
                "POWERTOOLS_LOG_LEVEL": POWERTOOLS_LOG_LEVEL,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                **adapter_env,
                **environment,
            },
            tracing=lambda_.Tracing.ACTIVE,
            logging_format=lambda_.LoggingFormat.JSON,
            log_group=self.log_group,
            role=self.role,
            reserved_concurrent_executions=reserved_concurrency,
            vpc=vpc,
            snap_start=lambda_.SnapStartConf.ON_PUBLISHED_VERSIONS if snapstart else None,
        )
        self.invoke_target: lambda_.IFunction = (
            lambda_.Alias(self, "Live", alias_name=ALIAS, version=self.function.current_version)
            if snapstart
            else self.function
        )
        self._acknowledge(vpc is not None)

    def _acknowledge(self, in_vpc: bool) -> None:
        policy = self.role.node.find_child("DefaultPolicy")
        acknowledge(
            policy,
            f"AwsSolutions-IAM5[Resource::{rendered(self, f'{self.log_group.log_group_arn}:*')}]",
            "Lambda creates its log streams at run time, inside this function's own log group.",
        )
        acknowledge(
            policy,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray PutTraceSegments/PutTelemetryRecords have no resource-level permissions "
            "(added by active tracing); every other statement names its resources.",
        )
        acknowledge(
            self.function,
            "AwsSolutions-L1",
            "Python 3.13 is deliberate: bundles ship byte code compiled by the runtime's own "
            "interpreter, which the build machines have for 3.13 (see RUNTIME in this module).",
        )
        if in_vpc:
            acknowledge(
                self.role,
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]",
                "The AWS-managed ENI policy Lambda needs to attach to the configured VPC.",
            )
