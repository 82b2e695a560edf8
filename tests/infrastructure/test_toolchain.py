"""The toolchain under every synth: a supported Node.js for jsii, CDK's recommended feature flags."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import CDK_JSON_CONTEXT


def _aws_cdk_lib_file(member: str) -> str:
    """A file of the npm package aws-cdk-lib that this venv runs (carried in its jsii tarball)."""
    spec = importlib.util.find_spec("aws_cdk._jsii")
    assert spec is not None and spec.origin is not None
    (tarball,) = Path(spec.origin).parent.glob("aws-cdk-lib@*.jsii.tgz")
    with tarfile.open(tarball) as tar:
        extracted = tar.extractfile(f"package/{member}")
        assert extracted is not None, member
        return extracted.read().decode()


def test_jsii_runs_the_cdk_on_a_node_it_supports_without_a_warning() -> None:
    """jsii checks the Node.js it runs on and prints a banner to stderr when that release is
    deprecated, end-of-life or untested, each ending "This software is currently running on node
    vX" (aws/jsii packages/@jsii/check-node/src/index.ts, `checkNode`; JSII_SILENCE_WARNING_*
    variables hide it). With the tests' PATH (conftest: the venv's Node.js first) and no silencing,
    importing the CDK prints no such banner."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JSII_SILENCE_WARNING")}
    done = subprocess.run(
        [sys.executable, "-c", "import aws_cdk"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "currently running on node" not in done.stderr, done.stderr


def test_cdk_json_sets_every_feature_flag_aws_cdk_lib_recommends() -> None:
    """aws-cdk-lib cx-api/FEATURE_FLAGS.md: `cdk init` writes every recommended flag into a new
    project's cdk.json (the package's recommended-feature-flags.json), and the CLI reports each one
    left unset ("N feature flags are not configured"). Every recommended flag carries its
    recommended value, and every flag in cdk.json is one this aws-cdk-lib documents (an unknown key
    changes nothing and hides that)."""
    recommended = json.loads(_aws_cdk_lib_file("recommended-feature-flags.json"))
    flags = {k: v for k, v in CDK_JSON_CONTEXT.items() if k.startswith("@aws-cdk")}
    assert {k: flags.get(k) for k in recommended} == recommended

    documented = set(
        re.findall(r"^### (@aws-cdk\S+)$", _aws_cdk_lib_file("cx-api/FEATURE_FLAGS.md"), re.M)
    )
    assert sorted(set(flags) - documented) == []


def test_api_access_logs_name_the_log_group_arn_without_the_trailing_wildcard(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    """CloudWatch Logs: a log group's `arn` ends in `:*`, its `logGroupArn` names the group itself
    (https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_LogGroup.html).
    API Gateway stores the access-log destination without the `:*`, so a template that passes
    `arn` shows the stage as drifted on every detection run (aws-cdk-lib FEATURE_FLAGS.md,
    @aws-cdk/aws-apigateway:logGroupDestinationArnWithoutWildcard, recommended)."""
    resources = synth()["api"]["Resources"]
    stages = [r for r in resources.values() if r["Type"] == "AWS::ApiGateway::Stage"]
    assert stages
    for stage in stages:
        separator, parts = stage["Properties"]["AccessLogSetting"]["DestinationArn"]["Fn::Join"]
        assert separator == ""
        *prefix, group = parts
        assert prefix == [
            "arn:",
            {"Ref": "AWS::Partition"},
            ":logs:",
            {"Ref": "AWS::Region"},
            ":",
            {"Ref": "AWS::AccountId"},
            ":log-group:",
        ]
        assert resources[group["Ref"]]["Type"] == "AWS::Logs::LogGroup"
