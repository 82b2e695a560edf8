"""The GPU endpoint stack: what it deploys, not how CDK names it."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from stacks import tgi_image
from tests.infrastructure.helpers import as_list, one, resources, statements

DEFAULT: dict[str, str] = {}
CHAT_GATED = {"model": "llama-3.1-8b-instruct"}
MULTI_GPU = {"model": "qwen2.5-32b-instruct"}


def _env(template: dict[str, Any]) -> Any:
    return one(template, "AWS::SageMaker::Model")["PrimaryContainer"]["Environment"]


def test_default_model_runs_twinllama_with_its_tgi_limits(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    env = _env(synth(**DEFAULT)["endpoint"])
    assert env["HF_MODEL_ID"] == "mlabonne/TwinLlama-3.1-8B-DPO"
    assert env["HF_MODEL_REVISION"] == "main"
    assert env["SM_NUM_GPUS"] == "1"
    assert env["MAX_INPUT_TOKENS"] == "2048"
    assert env["MAX_TOTAL_TOKENS"] == "4096"
    assert "MESSAGES_API_ENABLED" not in env  # alpaca: raw prompts through /generate
    assert "HF_TOKEN" not in env


def test_gated_chat_model_gets_messages_api_and_token_by_reference_only(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    template = synth(**CHAT_GATED)["endpoint"]
    env = _env(template)
    assert env["MESSAGES_API_ENABLED"] == "true"
    token = json.dumps(env["HF_TOKEN"])
    assert "{{resolve:secretsmanager:" in token
    assert "llm-twin/hf-token" in token
    assert "hf_" not in json.dumps(template).replace("hf-token", "")  # no token literal anywhere


def test_multi_gpu_instance_shards_over_all_its_gpus(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    template = synth(**MULTI_GPU)["endpoint"]
    assert _env(template)["SM_NUM_GPUS"] == "4"
    variant = one(template, "AWS::SageMaker::EndpointConfig")["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.g5.12xlarge"
    needs = one(template, "AWS::SageMaker::InferenceComponent")["Specification"][
        "ComputeResourceRequirements"
    ]
    assert needs["NumberOfAcceleratorDevicesRequired"] == 4
    assert needs["MinMemoryRequiredInMb"] <= 192 * 1024


def test_environment_agnostic_stack_maps_every_region_to_the_sdk_image(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    template = synth(**DEFAULT)["endpoint"]
    image = _env_image(template)
    assert image["Fn::FindInMap"][1] == {"Ref": "AWS::Region"}
    mapping = template["Mappings"][image["Fn::FindInMap"][0]]
    for region in ("us-east-1", "eu-west-1", "ap-southeast-3", "cn-north-1"):
        assert mapping[region]["uri"] == tgi_image.image_uri("3.3.6", region)
    assert mapping["eu-west-1"]["uri"].endswith(
        "huggingface-pytorch-tgi-inference:2.7.0-tgi3.3.6-gpu-py311-cu124-ubuntu22.04"
    )


@pytest.mark.parametrize("region", ["eu-west-1", "ap-southeast-3"])
def test_pinned_region_resolves_the_image_at_synth(
    synth: Callable[..., dict[str, dict[str, Any]]], region: str
) -> None:
    template = synth(account="123456789012", region=region)["endpoint"]
    assert _env_image(template) == tgi_image.image_uri("3.3.6", region)
    assert "Mappings" not in template


def test_a_region_without_inference_components_fails_synth(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """CloudFormation's registry for cn-north-1 has no AWS::SageMaker::InferenceComponent
    (aws-cloudformation/cfn-lint src/cfnlint/data/schemas/providers/cn-north-1.json, generated from
    each region's resource types); synth validates every template against it and, with
    @aws-cdk/core:validateAgainstDefaultRules (aws-cdk-lib FEATURE_FLAGS.md), refuses the stack
    instead of leaving the failure to the deployment."""
    with pytest.raises(RuntimeError, match=r"'AWS::SageMaker::InferenceComponent' does not exist"):
        synth(account="123456789012", region="cn-north-1")


def _env_image(template: dict[str, Any]) -> Any:
    return one(template, "AWS::SageMaker::Model")["PrimaryContainer"]["Image"]


def test_endpoint_config_uses_managed_scaling_lor_routing_and_long_startup(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    template = synth(**DEFAULT)["endpoint"]
    variant = one(template, "AWS::SageMaker::EndpointConfig")["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.g5.2xlarge"
    assert variant["ManagedInstanceScaling"] == {
        "Status": "ENABLED",
        "MinInstanceCount": 1,
        "MaxInstanceCount": 1,
    }
    assert variant["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 900
    assert variant["ModelDataDownloadTimeoutInSeconds"] == 900
    component = one(template, "AWS::SageMaker::InferenceComponent")
    assert component["Specification"]["StartupParameters"] == {
        "ContainerStartupHealthCheckTimeoutInSeconds": 900,
        "ModelDataDownloadTimeoutInSeconds": 900,
    }
    assert component["Specification"]["ComputeResourceRequirements"] == {
        "NumberOfAcceleratorDevicesRequired": 1,
        "NumberOfCpuCoresRequired": 4,
        "MinMemoryRequiredInMb": 16384,
    }
    assert component["RuntimeConfig"] == {"CopyCount": 1}
    assert component["InferenceComponentName"] == "llm-twin-twin-llama-3-1-8b-ic"


def test_execution_role_can_only_pull_the_tgi_image_and_write_its_logs(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    template = synth(**DEFAULT)["endpoint"]
    role = [
        r
        for r in resources(template, "AWS::IAM::Role")
        if "sagemaker.amazonaws.com" in json.dumps(r["Properties"]["AssumeRolePolicyDocument"])
    ]
    assert len(role) == 1
    assert "ManagedPolicyArns" not in role[0]["Properties"]
    by_action = {a: s for s in statements(template) for a in as_list(s["Action"])}
    pull = by_action["ecr:BatchGetImage"]
    assert "repository/huggingface-pytorch-tgi-inference" in json.dumps(pull["Resource"])
    assert by_action["ecr:GetAuthorizationToken"]["Resource"] == "*"  # no resource-level form
    assert by_action["cloudwatch:PutMetricData"]["Condition"]["StringLike"]["cloudwatch:namespace"]
    logs = json.dumps(by_action["logs:PutLogEvents"]["Resource"])
    assert "*" not in logs.replace(":log-stream:*", "")
    allowed = {
        "ecr:BatchCheckLayerAvailability",
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
        "ecr:GetAuthorizationToken",
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "logs:DescribeLogStreams",
        "cloudwatch:PutMetricData",
        # Application Auto Scaling's own role for the copy-count target
        "sagemaker:DescribeEndpoint",
        "sagemaker:DescribeEndpointConfig",
        "sagemaker:DescribeInferenceComponent",
        "sagemaker:UpdateInferenceComponentRuntimeConfig",
        "cloudwatch:DescribeAlarms",
        "cloudwatch:PutMetricAlarm",
        "cloudwatch:DeleteAlarms",
    }
    assert set(by_action) <= allowed


def test_model_log_group_has_retention_and_is_removed_with_the_stack(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """Containers hosted as an inference component log to
    /aws/sagemaker/InferenceComponents/<inference-component-name> (SageMaker developer guide,
    "Log Amazon SageMaker AI events with Amazon CloudWatch"; sagemaker-python-sdk
    serve/model_builder.py: inference-component endpoints get no /aws/sagemaker/Endpoints/ group).
    That group is the only place TGI start-up failures show up, so the stack must own it."""
    template = synth(**DEFAULT)["endpoint"]
    (group,) = resources(template, "AWS::Logs::LogGroup")
    assert (
        group["Properties"]["LogGroupName"]
        == "/aws/sagemaker/InferenceComponents/llm-twin-twin-llama-3-1-8b-ic"
    )
    assert group["Properties"]["RetentionInDays"] == 30
    assert group["DeletionPolicy"] == "Delete"


def test_always_on_tracks_concurrent_requests_per_copy_and_never_reaches_zero(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    template = synth(**DEFAULT)["endpoint"]
    target = one(template, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["ResourceId"] == "inference-component/llm-twin-twin-llama-3-1-8b-ic"
    assert target["ScalableDimension"] == "sagemaker:inference-component:DesiredCopyCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 1)
    (policy,) = resources(template, "AWS::ApplicationAutoScaling::ScalingPolicy")
    tracking = policy["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 4
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == (
        "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution"
    )
    assert tracking["ScaleInCooldown"] == 600
    assert tracking["ScaleOutCooldown"] == 120
    assert not resources(template, "AWS::CloudWatch::Alarm")


def test_scale_to_zero_releases_the_gpu_and_comes_back_on_no_capacity(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    template = synth(**CHAT_GATED)["endpoint"]
    variant = one(template, "AWS::SageMaker::EndpointConfig")["ProductionVariants"][0]
    assert variant["ManagedInstanceScaling"]["MinInstanceCount"] == 0
    target = one(template, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["MinCapacity"] == 0
    policies = {
        p["Properties"]["PolicyType"]: p["Properties"]
        for p in resources(template, "AWS::ApplicationAutoScaling::ScalingPolicy")
    }
    step = policies["StepScaling"]["StepScalingPolicyConfiguration"]
    assert step["AdjustmentType"] == "ChangeInCapacity"
    assert step["StepAdjustments"] == [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]
    assert "TargetTrackingScaling" in policies  # idle scale-in, down to zero
    alarm = one(template, "AWS::CloudWatch::Alarm")
    assert alarm["MetricName"] == "NoCapacityInvocationFailures"
    assert alarm["Namespace"] == "AWS/SageMaker"
    assert alarm["Dimensions"] == [
        {"Name": "InferenceComponentName", "Value": "llm-twin-llama-3-1-8b-instruct-ic"}
    ]
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["Threshold"] == 1
    step_id = next(
        k
        for k, v in template["Resources"].items()
        if v["Type"] == "AWS::ApplicationAutoScaling::ScalingPolicy"
        and v["Properties"]["PolicyType"] == "StepScaling"
    )
    assert alarm["AlarmActions"] == [{"Ref": step_id}]


def test_outputs_name_the_endpoint_component_and_region(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    outputs = synth(**DEFAULT)["endpoint"]["Outputs"]
    assert outputs["EndpointName"]["Value"] == "llm-twin-twin-llama-3-1-8b"
    assert outputs["InferenceComponentName"]["Value"] == "llm-twin-twin-llama-3-1-8b-ic"
    assert outputs["Region"]["Value"] == {"Ref": "AWS::Region"}


@pytest.mark.parametrize("context", [DEFAULT, CHAT_GATED, MULTI_GPU])
def test_nothing_is_retained_on_destroy(
    synth: Callable[..., dict[str, dict[str, Any]]], context: dict[str, str]
) -> None:
    for template in synth(**context).values():
        for logical_id, res in template["Resources"].items():
            assert res.get("DeletionPolicy", "Delete") != "Retain", logical_id
            assert res.get("UpdateReplacePolicy", "Delete") != "Retain", logical_id


def test_scale_to_zero_tracks_invocations_per_copy_as_aws_documents(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """SageMaker developer guide, "Scale an endpoint to zero instances"
    (https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-auto-scaling-zero-instances.html):
    register the component with min capacity 0, apply a target tracking policy on
    `SageMakerInferenceComponentInvocationsPerCopy` (it scales in to zero copies when traffic
    stops), and a step policy on a `NoCapacityInvocationFailures` alarm to come back."""
    template = synth(**CHAT_GATED)["endpoint"]
    tracking = [
        p["Properties"]["TargetTrackingScalingPolicyConfiguration"]
        for p in resources(template, "AWS::ApplicationAutoScaling::ScalingPolicy")
        if p["Properties"]["PolicyType"] == "TargetTrackingScaling"
    ]
    assert [t["PredefinedMetricSpecification"]["PredefinedMetricType"] for t in tracking] == [
        "SageMakerInferenceComponentInvocationsPerCopy"
    ]
    assert tracking[0]["TargetValue"] > 0
    assert one(template, "AWS::ApplicationAutoScaling::ScalableTarget")["MinCapacity"] == 0


def test_execution_role_writes_only_to_the_inference_component_log_group(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """SageMaker's CreateModel execution-role permissions list logs:CreateLogGroup,
    CreateLogStream, PutLogEvents, DescribeLogStreams (SageMaker developer guide, "How to use
    SageMaker AI execution roles", CreateModel API: Execution Role Permissions); an
    inference-component container writes to /aws/sagemaker/InferenceComponents/<name>, so the
    grant names that group and its streams, nothing else (no endpoint group, no "*")."""
    template = synth(**DEFAULT)["endpoint"]
    (group_id,) = [
        k for k, v in template["Resources"].items() if v["Type"] == "AWS::Logs::LogGroup"
    ]
    log_statements = [
        s for s in statements(template) if any(a.startswith("logs:") for a in as_list(s["Action"]))
    ]
    assert log_statements
    for statement in log_statements:
        assert "logs:CreateLogGroup" in as_list(statement["Action"])
        for resource in as_list(statement["Resource"]):
            assert group_id in json.dumps(resource), resource
    # and the group exists before the component's container starts writing to it
    (component,) = [
        v
        for v in template["Resources"].values()
        if v["Type"] == "AWS::SageMaker::InferenceComponent"
    ]
    assert group_id in component["DependsOn"]


def _staged_endpoint_template(**overrides: Any) -> Mapping[str, Any]:
    import aws_cdk as cdk
    from aws_cdk.assertions import Template
    from cdk_nag import AwsSolutionsChecks

    from stacks.config import ModelConfig, load_model_config
    from stacks.constructs.tgi_endpoint import TgiEndpoint
    from stacks.endpoint_stack import _acknowledge as acknowledge_endpoint

    fields = {
        **load_model_config("llama-3.1-8b-instruct").model_dump(),
        "hf_revision": "0e9e39f249a16976918f6564b8830bc894c89659",
        "hf_token_secret_name": None,
        "weights_s3_uri": "s3://acme-weights/llm",
        **overrides,
    }
    app = cdk.App(outdir=tempfile.mkdtemp())
    stack = cdk.Stack(app, "Staged")
    endpoint = TgiEndpoint(
        stack, "Endpoint", config=ModelConfig.model_validate(fields), project="llm-twin"
    )
    acknowledge_endpoint(endpoint)  # the endpoint stack's acknowledgements, as in the app
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    app.synth()  # an unacknowledged cdk-nag finding raises here
    return Template.from_stack(stack).to_json()


def test_staged_weights_load_from_s3_with_no_token_and_read_only_their_prefix() -> None:
    """Weights staged by `make stage-weights` load through ModelDataSource.S3DataSource with
    S3DataType S3Prefix and CompressionType None: SageMaker copies every object under the prefix
    to /opt/ml/model, keeping the key's remainder as the path
    (https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_S3ModelDataSource.html;
    https://docs.aws.amazon.com/sagemaker/latest/dg/large-model-inference-uncompressed.html), with
    the execution role's permissions. TGI's SageMaker entrypoint hands HF_MODEL_ID to the launcher
    as its model id (huggingface/text-generation-inference `sagemaker-entrypoint.sh`), and a local
    folder is a valid model id, so HF_MODEL_ID=/opt/ml/model and no revision, no token: nothing
    secret is in the environment DescribeModel returns."""
    template = _staged_endpoint_template()
    model = one(template, "AWS::SageMaker::Model")["PrimaryContainer"]
    assert model["ModelDataSource"] == {
        "S3DataSource": {
            "S3Uri": "s3://acme-weights/llm/meta-llama/Llama-3.1-8B-Instruct/"
            "0e9e39f249a16976918f6564b8830bc894c89659/",
            "S3DataType": "S3Prefix",
            "CompressionType": "None",
        }
    }
    assert model["Environment"]["HF_MODEL_ID"] == "/opt/ml/model"
    assert "HF_MODEL_REVISION" not in model["Environment"]
    assert "HF_TOKEN" not in model["Environment"]
    # And the execution role reads exactly that prefix: objects under it, and a listing of it
    prefix_key = "llm/meta-llama/Llama-3.1-8B-Instruct/0e9e39f249a16976918f6564b8830bc894c89659/"
    s3 = [s for s in statements(template) if any(a.startswith("s3:") for a in as_list(s["Action"]))]
    get = [s for s in s3 if as_list(s["Action"]) == ["s3:GetObject"]]
    [read] = get
    assert json.dumps(read["Resource"]).endswith(f':s3:::acme-weights/{prefix_key}*"]]}}')
    [listing] = [s for s in s3 if as_list(s["Action"]) == ["s3:ListBucket"]]
    assert json.dumps(listing["Resource"]).endswith(':s3:::acme-weights"]]}')
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{prefix_key}*"]}}
    assert all("s3:*" not in as_list(s["Action"]) for s in s3)
    assert len(s3) == 2


def test_hub_weights_get_no_s3_access() -> None:
    template = synth_default_endpoint()
    assert not [
        s for s in statements(template) if any(a.startswith("s3:") for a in as_list(s["Action"]))
    ]


def synth_default_endpoint() -> dict[str, Any]:
    from tests.conftest import synth_templates

    return synth_templates()["endpoint"]
