"""`tools.verify_destroyed` against moto (SageMaker, Logs, Secrets Manager).

moto 5.2 has no inference components: `FakeInferenceComponents` serves ListInferenceComponents
(and ListTags for their ARNs) in the real API's shape, on the same moto-backed client.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devkit.fakes.fake_aws_apis import FakeInferenceComponents
from tools import verify_destroyed
from tools.verify_destroyed import find_leftovers, report

REGION = "us-east-1"
PROJECT = "llm-twin"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"


class _Session(boto3.Session):
    """A boto3 session whose SageMaker client also answers the inference-component calls."""

    def __init__(self, components: FakeInferenceComponents) -> None:
        super().__init__(region_name=REGION)
        self._components = components

    def client(self, service_name: Any, *args: Any, **kwargs: Any) -> Any:
        client = super().client(service_name, *args, **kwargs)
        return self._components.attach(client) if service_name == "sagemaker" else client


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Session]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield _Session(FakeInferenceComponents(region=REGION))


def _endpoint(sm: Any, name: str, tags: list[dict[str, str]] | None = None) -> None:
    sm.create_model(
        ModelName=f"{name}-model",
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/tgi:latest"},
        Tags=tags or [],
    )
    sm.create_endpoint_config(
        EndpointConfigName=f"{name}-config",
        ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": f"{name}-model", "InitialInstanceCount": 1,
             "InstanceType": "ml.m5.large"}
        ],
        Tags=tags or [],
    )  # fmt: skip
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-config", Tags=tags or [])


def test_clean_account_reports_nothing_and_exits_zero(aws: _Session) -> None:
    # Given an account with only another project's resources and a user-made HF token secret
    sm = aws.client("sagemaker")
    _endpoint(sm, "other-app")
    aws.client("logs").create_log_group(logGroupName="/aws/lambda/other-app-fn")
    aws.client("secretsmanager").create_secret(Name="llm-twin/hf-token", SecretString="hf_x")

    # When verifying
    out = io.StringIO()
    code = report(find_leftovers(aws, PROJECT), PROJECT, REGION, out)

    # Then nothing is reported
    assert code == 0
    assert (
        "no endpoint, endpoint config, model, inference component, log group or secret"
        in out.getvalue()
    )


def test_every_kind_of_leftover_is_reported_with_its_delete_command(aws: _Session) -> None:
    # Given leftovers of each kind: by name prefix, by stack-name prefix and by project tag
    sm = aws.client("sagemaker")
    _endpoint(sm, "llm-twin-twin-llama-3-1-8b")
    _endpoint(sm, "GeneratedName123", tags=[{"Key": "project", "Value": PROJECT}])
    aws._components.add("llm-twin-twin-llama-3-1-8b-ic")
    aws._components.add("renamed-ic", tags={"project": PROJECT})
    aws._components.add("someone-elses-ic")
    logs = aws.client("logs")
    logs.create_log_group(logGroupName="/aws/sagemaker/Endpoints/llm-twin-twin-llama-3-1-8b")
    logs.create_log_group(logGroupName="/aws/lambda/LlmTwinApi-BusinessFn1A2B3C")
    logs.create_log_group(logGroupName="/aws/lambda/unrelated")
    secrets = aws.client("secretsmanager")
    secrets.create_secret(
        Name="LlmTwinOpikKey", SecretString="x", Tags=[{"Key": "project", "Value": PROJECT}]
    )
    secrets.create_secret(
        Name="deleted-one", SecretString="x", Tags=[{"Key": "project", "Value": PROJECT}]
    )
    secrets.delete_secret(SecretId="deleted-one", RecoveryWindowInDays=7)

    # When verifying
    leftovers = find_leftovers(aws, PROJECT)
    out = io.StringIO()
    code = report(leftovers, PROJECT, REGION, out)

    # Then each is listed once with the exact CLI that removes it, and the exit code is 1
    found = {(left.kind, left.name) for left in leftovers}
    assert found == {
        ("inference component", "llm-twin-twin-llama-3-1-8b-ic"),
        ("inference component", "renamed-ic"),
        ("endpoint", "llm-twin-twin-llama-3-1-8b"),
        ("endpoint", "GeneratedName123"),
        ("endpoint config", "llm-twin-twin-llama-3-1-8b-config"),
        ("endpoint config", "GeneratedName123-config"),
        ("model", "llm-twin-twin-llama-3-1-8b-model"),
        ("model", "GeneratedName123-model"),
        ("log group", "/aws/sagemaker/Endpoints/llm-twin-twin-llama-3-1-8b"),
        ("log group", "/aws/lambda/LlmTwinApi-BusinessFn1A2B3C"),
        ("secret", "LlmTwinOpikKey"),
    }
    assert code == 1
    text = out.getvalue()
    assert (
        "aws sagemaker delete-inference-component --inference-component-name llm-twin-twin-llama-3-1-8b-ic "
        "--region us-east-1" in text
    )
    assert (
        "aws sagemaker delete-endpoint --endpoint-name GeneratedName123 --region us-east-1" in text
    )
    assert (
        "aws logs delete-log-group --log-group-name /aws/lambda/LlmTwinApi-BusinessFn1A2B3C" in text
    )
    assert (
        "aws secretsmanager delete-secret --secret-id LlmTwinOpikKey --recovery-window-in-days 7"
        in text
    )
    # inference components are listed before the endpoint that cannot go while they exist
    assert text.index("LEFT inference component") < text.index("LEFT endpoint ")


def test_main_exits_non_zero_while_resources_remain(aws: _Session) -> None:
    # Given one endpoint left behind
    _endpoint(aws.client("sagemaker"), "llm-twin-x")

    # When the CLI runs; Then it fails
    assert verify_destroyed.main(["--project", PROJECT], session=aws) == 1


def test_without_a_region_it_says_how_to_name_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import boto3

    from tools.verify_destroyed import main

    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    assert main([], session=boto3.Session(region_name=None)) == 2
    assert "AWS_DEFAULT_REGION or pass --region" in capsys.readouterr().err
