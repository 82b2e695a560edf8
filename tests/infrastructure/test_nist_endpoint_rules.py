"""The NIST 800-53 rev 5 SageMaker endpoint rule runs in synth; its finding is handled honestly."""

from __future__ import annotations

import json
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sagemaker as sagemaker

from stacks.app_builder import build_app
from stacks.endpoint_encryption import (
    LOCAL_INSTANCE_STORAGE,
    has_local_storage,
    instance_family,
    protect_endpoint_storage,
)
from stacks.instances import GPU_INSTANCES
from stacks.nag_packs import ENDPOINT_KMS_RULE, NIST_PLUGIN, SageMakerEndpointNistChecks
from tests.conftest import app_context


def _endpoint_config_app(outdir: Path, instance_type: str, *, protect: bool) -> cdk.App:
    app = cdk.App(outdir=str(outdir))
    stack = cdk.Stack(app, "Endpoint")
    role = iam.Role(stack, "Role", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"))
    config = sagemaker.CfnEndpointConfig(
        stack,
        "EndpointConfig",
        execution_role_arn=role.role_arn,
        production_variants=[
            sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                variant_name="AllTraffic", instance_type=instance_type, initial_instance_count=1
            )
        ],
    )
    if protect:
        protect_endpoint_storage(config, instance_type=instance_type)
    cdk.Validations.of(app).add_plugins(SageMakerEndpointNistChecks(app))
    return app


def test_pack_reports_under_the_nist_plugin_name_that_acknowledgements_use() -> None:
    pack = SageMakerEndpointNistChecks()
    assert pack.name == NIST_PLUGIN
    assert ENDPOINT_KMS_RULE.split("-", 1)[0] == NIST_PLUGIN  # what stacks.nag.acknowledge keys on


def test_an_endpoint_config_without_kms_key_or_acknowledgement_fails_synth(tmp_path: Path) -> None:
    # Given an endpoint config on a GPU instance, neither encrypted nor acknowledged
    app = _endpoint_config_app(tmp_path, "ml.g5.2xlarge", protect=False)
    # When it synthesizes, Then the NIST rule fails it
    with pytest.raises(RuntimeError, match=r"(?i)validation ?failed"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    nist = [p for p in report["pluginReports"] if p["pluginName"] == NIST_PLUGIN]
    assert [v["ruleName"] for v in nist[0]["violations"]] == [ENDPOINT_KMS_RULE]


def test_local_storage_instance_is_acknowledged_with_the_sagemaker_reason(tmp_path: Path) -> None:
    app = _endpoint_config_app(tmp_path, "ml.g6e.xlarge", protect=True)
    assembly = app.synth()  # passes: the finding is acknowledged
    template = assembly.get_stack_by_name("Endpoint").template
    config = next(r for r in template["Resources"].values() if "ProductionVariants" in str(r))
    assert "KmsKeyId" not in config["Properties"]
    acks = {
        k: v
        for c in app.node.find_all()
        for m in c.node.metadata
        if m.type == "aws:cdk:acknowledged-rules"
        for k, v in m.data.items()
    }
    reason = acks[f"{NIST_PLUGIN}::{ENDPOINT_KMS_RULE}"]
    assert "local NVMe instance storage" in reason and "KmsKeyId" in reason


def test_instance_without_local_storage_gets_a_kms_key_and_passes_unacknowledged(
    tmp_path: Path,
) -> None:
    # Given an EBS-only instance type (no project model uses one today)
    app = _endpoint_config_app(tmp_path, "ml.p3.2xlarge", protect=True)
    # When it synthesizes, Then the NIST rule passes without an acknowledgement
    template = app.synth().get_stack_by_name("Endpoint").template
    keys = [r for r in template["Resources"].values() if r["Type"] == "AWS::KMS::Key"]
    assert len(keys) == 1 and keys[0]["Properties"]["EnableKeyRotation"] is True
    config = next(
        r for r in template["Resources"].values() if r["Type"] == "AWS::SageMaker::EndpointConfig"
    )
    assert "Fn::GetAtt" in config["Properties"]["KmsKeyId"]


def test_every_supported_gpu_instance_is_classified_and_has_local_storage() -> None:
    families = {instance_family(t) for t in GPU_INSTANCES}
    assert families <= set(LOCAL_INSTANCE_STORAGE)
    assert all(has_local_storage(t) for t in GPU_INSTANCES)
    with pytest.raises(ValueError, match=r"unknown instance family 'g7'.*LOCAL_INSTANCE_STORAGE"):
        has_local_storage("ml.g7.2xlarge")


@pytest.mark.parametrize(
    "context",
    [{}, {"model": "llama-3.1-8b-instruct"}, {"model": "qwen2.5-32b-instruct"}],
    ids=["default", "gated-chat", "multi-gpu"],
)
def test_the_app_finding_is_exactly_the_acknowledged_endpoint_config(
    context: dict[str, str],
) -> None:
    # Given the real app's construct tree (synth itself runs the pack: see test_security_gates)
    app = cdk.App(context=app_context(**context))
    build_app(app)
    # When the pack checks it directly (validateScope reports acknowledged findings too)
    report = SageMakerEndpointNistChecks().validate_scope(app)
    # Then its one finding is the endpoint config's, which carries the matching acknowledgement
    found = {
        (v.rule_name, str(r.construct_path))
        for v in report.violations
        for r in v.violating_resources
    }
    assert {rule for rule, _ in found} == {ENDPOINT_KMS_RULE}
    by_path = {c.node.path: c for c in app.node.find_all()}
    for _, path in found:
        assert path.endswith("/Tgi/EndpointConfig"), path
        acked = {
            k
            for m in by_path[path].node.metadata
            if m.type == "aws:cdk:acknowledged-rules"
            for k in m.data
        }
        assert f"{NIST_PLUGIN}::{ENDPOINT_KMS_RULE}" in acked
