"""The endpoint stack with `engine: vllm` (model_config/twin-llama-3.1-8b-vllm.yaml): AWS's vLLM
container image from the sagemaker SDK's image config, its SM_VLLM_* environment, and the same
inference component, scaling and alarms as TGI.

Sources: the SDK's `vllm` image config (sagemaker/core/image_uri_config/vllm.json, read through
`image_uris.retrieve`); AWS's vLLM DLC on SageMaker takes `SM_VLLM_<FLAG>` variables, each turned
into `vllm serve --<flag>`, and serves /ping and /invocations on port 8080
(aws/model-hosting-container-standards docs/sagemaker/01_quickstart.md;
https://aws.github.io/deep-learning-containers/vllm/deployment/sagemaker/); a model id in
SM_VLLM_MODEL is downloaded from the Hub, HF_TOKEN for gated ones (same pages).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from stacks import tgi_image
from tests.infrastructure.helpers import as_list, one, resources, statements

VLLM = {"model": "twin-llama-3.1-8b-vllm"}
VERSION = "0.30.0"


def _container(template: Mapping[str, Any]) -> Any:
    return one(template, "AWS::SageMaker::Model")["PrimaryContainer"]


def test_the_model_runs_vllm_with_its_limits_as_sm_vllm_variables(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    env = _container(synth(**VLLM)["endpoint"])["Environment"]
    assert env == {
        "SM_VLLM_MODEL": "mlabonne/TwinLlama-3.1-8B-DPO",
        "SM_VLLM_REVISION": "main",
        "SM_VLLM_SERVED_MODEL_NAME": "mlabonne/TwinLlama-3.1-8B-DPO",
        "SM_VLLM_TENSOR_PARALLEL_SIZE": "1",
        "SM_VLLM_MAX_MODEL_LEN": "4096",
        "SM_VLLM_MAX_NUM_SEQS": "16",
        "SM_VLLM_GPU_MEMORY_UTILIZATION": "0.9",
    }


def test_environment_agnostic_synth_maps_every_region_to_the_sdks_vllm_image(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    template = synth(**VLLM)["endpoint"]
    image = _container(template)["Image"]
    assert image["Fn::FindInMap"][1] == {"Ref": "AWS::Region"}
    mapping = template["Mappings"][image["Fn::FindInMap"][0]]
    assert set(mapping) == set(tgi_image.regional_image_uris(VERSION, "vllm"))
    assert mapping["us-east-1"]["uri"] == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/vllm:0.30.0-gpu-py312-cu130-ubuntu24.04-sagemaker"
    )


@pytest.mark.parametrize("region", ["eu-west-1", "us-west-2"])
def test_pinned_region_resolves_the_vllm_image_at_synth(
    synth: Callable[..., dict[str, dict[str, Any]]], region: str
) -> None:
    template = synth(account="123456789012", region=region, **VLLM)["endpoint"]
    image = _container(template)["Image"]
    assert image == tgi_image.image_uri(VERSION, region, "vllm")
    assert f".dkr.ecr.{region}.amazonaws.com/vllm:{VERSION}-" in image
    assert image.endswith("-sagemaker")  # the SageMaker variant: SM_VLLM_* and port 8080


def test_the_role_pulls_the_vllm_repository_only(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    by_action = {a: s for s in statements(synth(**VLLM)["endpoint"]) for a in as_list(s["Action"])}
    pull = json.dumps(by_action["ecr:BatchGetImage"]["Resource"])
    assert "repository/vllm" in pull and "tgi" not in pull


def test_same_inference_component_scaling_and_timeouts_as_tgi(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    vllm, tgi = synth(**VLLM)["endpoint"], synth()["endpoint"]
    for kind in ("AWS::SageMaker::EndpointConfig", "AWS::ApplicationAutoScaling::ScalableTarget"):
        assert len(resources(vllm, kind)) == len(resources(tgi, kind)) == 1
    component = one(vllm, "AWS::SageMaker::InferenceComponent")
    assert component["InferenceComponentName"] == "llm-twin-twin-llama-3-1-8b-vllm-ic"
    assert (
        component["Specification"]["ComputeResourceRequirements"][
            "NumberOfAcceleratorDevicesRequired"
        ]
        == 1
    )
    assert component["Specification"]["StartupParameters"] == {
        "ContainerStartupHealthCheckTimeoutInSeconds": 900,
        "ModelDataDownloadTimeoutInSeconds": 900,
    }
    variant = one(vllm, "AWS::SageMaker::EndpointConfig")["ProductionVariants"][0]
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 900
    assert variant["ManagedInstanceScaling"]["Status"] == "ENABLED"
    policies = resources(vllm, "AWS::ApplicationAutoScaling::ScalingPolicy")
    assert {p["Properties"]["PolicyType"] for p in policies} == {"TargetTrackingScaling"}


def test_a_gated_vllm_model_gets_the_hf_token_by_dynamic_reference_and_can_scale_to_zero() -> None:
    import aws_cdk as cdk
    import yaml

    from stacks.config import CONFIG_DIR, ModelConfig
    from stacks.constructs.tgi_endpoint import TgiEndpoint

    data = yaml.safe_load((CONFIG_DIR / "twin-llama-3.1-8b-vllm.yaml").read_text())
    data.update(
        name="gated-vllm",
        hf_model_id="meta-llama/Llama-3.1-8B-Instruct",
        hf_token_secret_name="hf/tok",
        scaling={"mode": "scale_to_zero", "max_copies": 1},
    )
    stack = cdk.Stack(cdk.App())
    TgiEndpoint(stack, "Llm", config=ModelConfig.model_validate(data), project="llm-twin")
    template = cdk.assertions.Template.from_stack(stack).to_json()
    token = json.dumps(_container(template)["Environment"]["HF_TOKEN"])
    assert "{{resolve:secretsmanager:" in token and "hf/tok" in token
    # Scale to zero as with TGI: no copy -> NoCapacityInvocationFailures -> a step out of zero
    alarm = one(template, "AWS::CloudWatch::Alarm")
    assert alarm["MetricName"] == "NoCapacityInvocationFailures"
    target = one(template, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["MinCapacity"] == 0


def test_the_business_lambda_is_told_the_engine(
    synth: Callable[..., dict[str, dict[str, Any]]],
) -> None:
    api = synth(**VLLM)["api"]
    functions = [
        f["Properties"]
        for f in resources(api, "AWS::Lambda::Function")
        if "MODEL_PROFILE" in json.dumps(f["Properties"].get("Environment", {}))
    ]
    (fn,) = functions
    profile = json.loads(fn["Environment"]["Variables"]["MODEL_PROFILE"])
    assert profile["engine"] == "vllm" and profile["prompt_format"] == "alpaca"
