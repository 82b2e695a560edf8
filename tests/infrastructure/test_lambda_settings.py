"""The `lambda_architecture` and `snapstart` settings, synthesized.

- Architecture: a function's `Architectures` is `x86_64` or `arm64`, and a layer must be built
  for the function's architecture (https://docs.aws.amazon.com/lambda/latest/dg/foundation-arch.html);
  the Lambda Web Adapter is published as `LambdaAdapterLayerX86` and `LambdaAdapterLayerArm64`
  (aws/aws-lambda-web-adapter README, "Lambda functions packaged as Zip package").
- SnapStart works only on published versions and the aliases that point to them, never on
  $LATEST (https://docs.aws.amazon.com/lambda/latest/dg/snapstart.html, "Supported features and
  limitations"); API Gateway must call the qualified ARN, and the function's resource policy must
  let it invoke that ARN (https://repost.aws/knowledge-center/api-gateway-lambda-stage-variable-500).
- The adapter POSTs to the paths in AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH and
  AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH around the snapshot (aws-lambda-web-adapter
  `docs/src/features/snapstart.md`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.infrastructure.helpers import resources

OPIK = {"opik_api_key_secret_name": "llm-twin/opik"}
BUSINESS = "llm-twin-rag"


def _logical_ids(template: dict[str, Any], type_name: str) -> list[str]:
    return [k for k, r in template["Resources"].items() if r["Type"] == type_name]


def _business_id(template: dict[str, Any]) -> str:
    (found,) = [
        k
        for k in _logical_ids(template, "AWS::Lambda::Function")
        if template["Resources"][k]["Properties"].get("FunctionName") == BUSINESS
    ]
    return found


def _lambda_integrations(template: dict[str, Any]) -> list[str]:
    """Every API Gateway method's integration URI that calls a Lambda function."""
    uris = []
    for method in resources(template, "AWS::ApiGateway::Method"):
        integration = method["Properties"].get("Integration", {})
        uri = json.dumps(integration.get("Uri", ""))
        if ":lambda:path/" in uri:
            uris.append(uri)
    return uris


@pytest.mark.parametrize(
    ("architecture", "layer"),
    [("x86_64", "LambdaAdapterLayerX86"), ("arm64", "LambdaAdapterLayerArm64")],
)
def test_every_lambda_runs_on_the_chosen_architecture_with_its_adapter_layer(
    synth: Callable[..., dict[str, dict[str, Any]]], architecture: str, layer: str
) -> None:
    context = {**OPIK} if architecture == "x86_64" else {**OPIK, "lambda_architecture": "arm64"}
    template = synth(**context)["api"]
    functions = [r["Properties"] for r in resources(template, "AWS::Lambda::Function")]
    named = [f for f in functions if "FunctionName" in f]  # CDK's own helpers have no name
    assert {f["FunctionName"] for f in named} >= {
        BUSINESS,
        "llm-twin-authorizer",
        "llm-twin-trace-forwarder",
    }
    for function in named:
        assert function["Architectures"] == [architecture], function["FunctionName"]
    (business,) = [f for f in named if f["FunctionName"] == BUSINESS]
    (layer_arn,) = business["Layers"]
    assert f":753240598075:layer:{layer}:" in json.dumps(layer_arn)


def test_each_architecture_deploys_its_own_bundle(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    # The code asset's hash covers the pip platform tags: an arm64 deploy cannot reuse an
    # x86_64 bundle (its compiled wheels would not load on Graviton).
    def code_keys(context: dict[str, str]) -> dict[str, str]:
        template = synth(**context)["api"]
        return {
            r["Properties"]["FunctionName"]: json.dumps(r["Properties"]["Code"])
            for r in resources(template, "AWS::Lambda::Function")
            if "FunctionName" in r["Properties"]
        }

    x86 = code_keys(OPIK)
    arm = code_keys({**OPIK, "lambda_architecture": "arm64"})
    assert x86.keys() == arm.keys()
    for name in x86:
        assert x86[name] != arm[name], name


def test_snapstart_publishes_a_version_and_api_gateway_calls_its_alias(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    template = synth(snapstart=True)["api"]
    business_id = _business_id(template)
    business = template["Resources"][business_id]["Properties"]
    assert business["SnapStart"] == {"ApplyOn": "PublishedVersions"}

    (version_id,) = [
        k
        for k in _logical_ids(template, "AWS::Lambda::Version")
        if template["Resources"][k]["Properties"]["FunctionName"] == {"Ref": business_id}
    ]
    (alias_id,) = _logical_ids(template, "AWS::Lambda::Alias")
    alias = template["Resources"][alias_id]["Properties"]
    assert alias["FunctionName"] == {"Ref": business_id}
    assert alias["FunctionVersion"] == {"Fn::GetAtt": [version_id, "Version"]}

    # Every integration calls the alias (Ref of an alias is its ARN), none the bare function.
    uris = _lambda_integrations(template)
    assert uris
    for uri in uris:
        assert json.dumps({"Ref": alias_id}) in uri
        assert business_id not in uri
    # ... and API Gateway may invoke the alias, not $LATEST.
    targets = [
        p["Properties"]["FunctionName"]
        for p in resources(template, "AWS::Lambda::Permission")
        if p["Properties"]["Principal"] == "apigateway.amazonaws.com"
    ]
    business_targets = [
        t for t in targets if business_id in json.dumps(t) or alias_id in json.dumps(t)
    ]
    assert business_targets
    assert all(t == {"Ref": alias_id} for t in business_targets)

    env = business["Environment"]["Variables"]
    before = env["AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH"]
    after = env["AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH"]
    # The adapter rejects a hook path that collapses to "/" or equals its pass-through path.
    assert before.startswith("/") and after.startswith("/")
    assert len({before, after, "/", "/events"}) == 4


def test_without_snapstart_nothing_is_published_and_no_hook_is_configured(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    template = synth()["api"]
    business_id = _business_id(template)
    business = template["Resources"][business_id]["Properties"]
    assert "SnapStart" not in business
    assert not _logical_ids(template, "AWS::Lambda::Alias")
    assert not any(
        template["Resources"][k]["Properties"]["FunctionName"] == {"Ref": business_id}
        for k in _logical_ids(template, "AWS::Lambda::Version")
    )
    for uri in _lambda_integrations(template):
        assert "AWS::Lambda::Alias" not in uri
    env = business["Environment"]["Variables"]
    assert not any(key.startswith("AWS_LWA_SNAPSTART_") for key in env)


def test_snapstart_and_arm64_synthesize_together(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    # SnapStart's documented limits are provisioned concurrency, EFS and ephemeral storage over
    # 512 MB; arm64 is not one of them (https://docs.aws.amazon.com/lambda/latest/dg/snapstart.html).
    template = synth(snapstart=True, lambda_architecture="arm64")["api"]
    business = template["Resources"][_business_id(template)]["Properties"]
    assert business["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    assert business["Architectures"] == ["arm64"]
    # None of the documented incompatibilities is configured on the function.
    assert "FileSystemConfigs" not in business
    assert business.get("EphemeralStorage", {"Size": 512})["Size"] <= 512
    assert not resources(template, "AWS::Lambda::Alias")[0]["Properties"].get(
        "ProvisionedConcurrencyConfig"
    )


def test_models_that_would_overflow_tmp_fail_the_build(tmp_path: Path) -> None:
    # SnapStart allows at most 512 MB of ephemeral storage, Lambda's default, which the stack
    # keeps (https://docs.aws.amazon.com/lambda/latest/dg/snapstart.html); the zip and its
    # extraction sit in /tmp together at load time.
    from stacks.bundling import LAMBDA_TMP_BYTES, ModelBundle

    embedding, reranker = tmp_path / "embedding", tmp_path / "reranker"
    for folder in (embedding, reranker):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"onnx")
    bundle = ModelBundle(embedding_dir=embedding, reranker_dir=reranker)
    bundle.build(tmp_path / "ok")
    assert (tmp_path / "ok" / "reranker" / "model.onnx").read_bytes() == b"onnx"
    # Together a byte over half of /tmp (sparse files: no disk used, and nothing is copied).
    for folder, size in ((embedding, LAMBDA_TMP_BYTES // 4), (reranker, LAMBDA_TMP_BYTES // 4 + 1)):
        with open(folder / "model.onnx", "wb") as model:
            model.truncate(size)
    with pytest.raises(ValueError, match="MiB of /tmp"):
        bundle.build(tmp_path / "too-big")
    assert not (tmp_path / "too-big").exists()
