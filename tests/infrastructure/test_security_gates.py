"""cdk-nag at zero unacknowledged findings, every acknowledgement justified; cfn-lint clean."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from cdk_nag import AwsSolutionsChecks

from stacks.app_builder import build_app
from tests.conftest import app_context

CONTEXTS = [{}, {"model": "llama-3.1-8b-instruct"}, {"model": "qwen2.5-32b-instruct"}]
# cfn-lint findings we accept, each with its reason.
CFN_LINT_IGNORED: dict[str, str] = {
    "W3005": "CDK's Function adds DependsOn on its explicit role next to the GetAtt, so the role's "
    "policy exists before the function is created; redundant, harmless, not ours to remove.",
}
# Regions linted against: where SageMaker inference components and every other resource exist.
CFN_LINT_REGIONS = ["us-east-1", "us-west-2", "eu-west-1"]


def _synth_to(outdir: Path, context: dict[str, Any]) -> cdk.App:
    app = cdk.App(outdir=str(outdir), context=app_context(**context))
    build_app(app)
    app.synth()
    return app


@pytest.mark.parametrize("context", CONTEXTS, ids=["default", "gated-chat", "multi-gpu"])
def test_app_has_no_unacknowledged_nag_findings_and_templates_lint_clean(
    tmp_path: Path, context: dict[str, Any]
) -> None:
    # Given the real app with its AwsSolutions checks; When it synthesizes (a finding would raise)
    _synth_to(tmp_path, context)
    report = tmp_path / "validation-report.json"
    if report.exists():
        plugins = json.loads(report.read_text())["pluginReports"]
        assert all(p["conclusion"] == "success" for p in plugins), plugins

    # Then cfn-lint finds no error or warning in any template
    from cfnlint.api import ManualArgs, lint

    templates = sorted(tmp_path.glob("*.template.json"))
    assert templates
    for path in templates:
        matches = lint(path.read_text(), config=ManualArgs(regions=CFN_LINT_REGIONS))
        findings = [
            m for m in matches if m.rule.id not in CFN_LINT_IGNORED and m.rule.id[0] in "EW"
        ]
        assert not findings, f"{path.name}: " + "; ".join(
            f"{m.rule.id} {m.message}" for m in findings
        )


def test_nag_check_fails_synth_on_an_unacknowledged_finding(tmp_path: Path) -> None:
    # Given an app with a wildcard IAM policy and no acknowledgement
    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "Bad")
    role = iam.Role(stack, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    role.add_to_policy(iam.PolicyStatement(actions=["sagemaker:*"], resources=["*"]))
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    # When it synthesizes, Then the nag plugin fails it
    with pytest.raises(RuntimeError, match=r"(?i)validation ?failed"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    rules = {v["ruleName"] for p in report["pluginReports"] for v in p["violations"]}
    assert "AwsSolutions-IAM5[Action::sagemaker:*]" in rules


def test_every_acknowledgement_names_a_granular_rule_and_a_reason(tmp_path: Path) -> None:
    app = _synth_to(tmp_path, {})
    acks: dict[str, str] = {}
    for construct in app.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == "aws:cdk:acknowledged-rules":
                acks.update(entry.data)
    assert acks, "expected the documented acknowledgements"
    for rule, reason in acks.items():
        plugin, _, finding = rule.partition("::")
        assert plugin in {"AwsSolutions", "NIST.800.53.R5"}, rule
        if "-IAM5" in finding or "-IAM4" in finding:
            assert "[" in finding, f"{rule}: IAM findings are acknowledged one finding at a time"
        assert len(reason) >= 40, f"{rule}: reason too thin: {reason!r}"
