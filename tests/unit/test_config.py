"""Model config and cdk context validation: each kind of mistake names file, field and what is allowed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacks.config import (
    ConfigError,
    available_models,
    load_deployment_config,
    load_model_config,
)
from tests.conftest import REPO

GOOD = yaml.safe_load((REPO / "model_config" / "twin-llama-3.1-8b.yaml").read_text())


def _write(tmp_path: Path, data: str | dict[str, Any], name: str = "m") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _with(**changes: Any) -> dict[str, Any]:
    data = {**GOOD, **{k: v for k, v in changes.items() if "." not in k}}
    for dotted, value in changes.items():
        if "." in dotted:
            section, field = dotted.split(".")
            data[section] = {**data.get(section, {}), field: value}
    return data


def _error(tmp_path: Path, data: str | dict[str, Any]) -> str:
    _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_model_config("m", tmp_path)
    return str(info.value)


def test_shipped_configs_are_valid_and_derive_gpus_from_the_instance() -> None:
    assert set(available_models()) >= {
        "twin-llama-3.1-8b",
        "llama-3.1-8b-instruct",
        "qwen2.5-32b-instruct",
    }
    default = load_model_config("twin-llama-3.1-8b")
    assert (default.gpus, default.gpu_memory_gib, default.prompt_format) == (1, 24, "alpaca")
    multi = load_model_config("qwen2.5-32b-instruct")
    assert (multi.gpus, multi.gpu_memory_gib) == (4, 96)
    gated = load_model_config("llama-3.1-8b-instruct")
    assert gated.hf_token_secret_name == "llm-twin/hf-token"
    assert gated.scaling.effective_min_copies == 0


def test_unknown_model_lists_the_available_ones(tmp_path: Path) -> None:
    _write(tmp_path, GOOD, "known")
    with pytest.raises(ConfigError, match=r"unknown model 'nope'.*available: known"):
        load_model_config("nope", tmp_path)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    assert "m.yaml: not valid YAML" in _error(tmp_path, "hf_model_id: [unclosed\n")


def test_a_list_instead_of_a_mapping(tmp_path: Path) -> None:
    assert "must be a YAML mapping" in _error(tmp_path, "- a\n- b\n")


def test_unknown_field_is_named(tmp_path: Path) -> None:
    message = _error(tmp_path, _with(max_input_tokens=10))
    assert "field 'max_input_tokens': unknown field" in message


def test_missing_field_is_named(tmp_path: Path) -> None:
    data = dict(GOOD)
    del data["instance_type"]
    assert "field 'instance_type': Field required" in _error(tmp_path, data)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    assert "field 'tgi.max_input_tokens'" in _error(
        tmp_path, _with(**{"tgi.max_input_tokens": "lots"})
    )


def test_prompt_format_lists_allowed_values(tmp_path: Path) -> None:
    message = _error(tmp_path, _with(prompt_format="vicuna"))
    assert "field 'prompt_format'" in message and "'alpaca' or 'chat'" in message


def test_unknown_instance_lists_gpu_instances(tmp_path: Path) -> None:
    message = _error(tmp_path, _with(instance_type="ml.m5.xlarge"))
    assert "field 'instance_type'" in message and "ml.g5.2xlarge" in message


def test_unknown_tgi_version_lists_the_sdk_versions(tmp_path: Path) -> None:
    message = _error(tmp_path, _with(tgi_version="9.9.9"))
    assert "field 'tgi_version'" in message and "3.3.6" in message


def test_input_tokens_must_leave_room_to_generate(tmp_path: Path) -> None:
    message = _error(tmp_path, _with(**{"tgi.max_input_tokens": 4096}))
    assert "max_input_tokens (4096) must be less than max_total_tokens (4096)" in message


def test_prefill_below_input_is_rejected(tmp_path: Path) -> None:
    message = _error(tmp_path, _with(**{"tgi.max_batch_prefill_tokens": 1000}))
    assert "max_batch_prefill_tokens (1000) must be at least max_input_tokens (2048)" in message


def test_batch_total_below_total_is_rejected(tmp_path: Path) -> None:
    assert "max_batch_total_tokens (2000)" in _error(
        tmp_path, _with(**{"tgi.max_batch_total_tokens": 2000})
    )


def test_generation_limit_must_fit_the_token_budget(tmp_path: Path) -> None:
    message = _error(tmp_path, _with(**{"generation.max_new_tokens_limit": 4000}))
    assert "max_new_tokens_limit (4000) must be at most" in message


def test_gpu_count_above_the_instance_is_rejected(tmp_path: Path) -> None:
    assert "exceeds the 1 GPU(s) of ml.g5.2xlarge" in _error(tmp_path, _with(gpu_count=4))


def test_always_on_cannot_have_zero_copies(tmp_path: Path) -> None:
    message = _error(tmp_path, _with(**{"scaling.min_copies": 0}))
    assert "field 'scaling'" in message and "always_on needs min_copies >= 1" in message


def test_bad_hub_id(tmp_path: Path) -> None:
    assert "owner/name" in _error(tmp_path, _with(hf_model_id="not an id"))


def test_name_must_match_the_file(tmp_path: Path) -> None:
    assert "must match the file name" in _error(tmp_path, _with(name="other"))


def test_context_mistakes_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"cdk context: key 'api_rate_limit_rps'"):
        load_deployment_config({"api_rate_limit_rps": "-1"})
    with pytest.raises(ConfigError, match=r"key 'cors_origins'.*https://"):
        load_deployment_config({"cors_origins": "http://insecure.example"})
    with pytest.raises(
        ConfigError, match=r"key 'trace_redaction'.*'none', 'hash_query' or 'drop_texts'"
    ):
        load_deployment_config({"trace_redaction": "all"})


def test_context_strings_from_the_command_line_are_coerced() -> None:
    config = load_deployment_config(
        {"api_rate_limit_rps": "25", "cors_origins": "https://a.example, https://b.example"}
    )
    assert config.api_rate_limit_rps == 25
    assert config.cors_origins == ["https://a.example", "https://b.example"]


def test_synth_fails_with_a_clear_message_for_an_unknown_model(tmp_path: Path) -> None:
    # Given the cdk CLI's way of passing context; When app.py runs; Then it exits 1 and says why
    env = {
        **os.environ,
        "CDK_CONTEXT_JSON": '{"model": "no-such-model"}',
        "CDK_OUTDIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1
    assert "unknown model 'no-such-model'" in done.stderr
    assert "twin-llama-3.1-8b" in done.stderr


# Every kind of cdk context mistake, through the real synth path (build_app raises before any
# stack is synthesized): the message names the key, what is wrong and what is allowed.
CONTEXT_MISTAKES = {
    "reserved-concurrency-not-a-number": (
        {"lambda_reserved_concurrency": "many"},
        r"key 'lambda_reserved_concurrency': Input should be a valid integer",
    ),
    "reserved-concurrency-zero": (
        {"lambda_reserved_concurrency": "0"},
        r"key 'lambda_reserved_concurrency': Input should be greater than or equal to 1",
    ),
    "bad-email": ({"alarm_email": "oncall"}, r"key 'alarm_email': String should match pattern '\^"),
    "project-with-capitals-and-space": (
        {"project": "LLM Twin"},
        r"key 'project': String should match pattern '\^\[a-z\]\[a-z0-9-\]\{1,30\}\$'",
    ),
    "project-too-short": ({"project": "a"}, r"key 'project': String should match pattern"),
    "sample-rate-above-one": (
        {"trace_sample_rate": "1.5"},
        r"key 'trace_sample_rate': Input should be less than or equal to 1",
    ),
    "sample-rate-not-a-number": (
        {"trace_sample_rate": "often"},
        r"key 'trace_sample_rate': Input should be a valid number",
    ),
    "redaction-not-allowed": (
        {"trace_redaction": "everything"},
        r"key 'trace_redaction': .*'none', 'hash_query' or 'drop_texts'; got 'everything'",
    ),
    "bool-not-a-bool": (
        {"idle_scale_to_zero": "maybe"},
        r"key 'idle_scale_to_zero': Input should be a valid boolean",
    ),
    "cors-wildcard": (
        {"cors_origins": "https://*.example.com"},
        r"key 'cors_origins': 'https://\*\.example\.com' must be an https:// origin without path or wildcard",
    ),
    "cors-with-path": (
        {"cors_origins": "https://app.example.com/ui"},
        r"key 'cors_origins': .* must be an https:// origin without path",
    ),
    "rate-limit-negative": (
        {"api_rate_limit_rps": "-1"},
        r"key 'api_rate_limit_rps': Input should be greater than 0",
    ),
    "burst-zero": (
        {"api_burst_limit": "0"},
        r"key 'api_burst_limit': .*greater than or equal to 1",
    ),
    "quota-not-an-integer": (
        {"api_quota_per_day": "1e3"},
        r"key 'api_quota_per_day': Input should be a valid integer",
    ),
    "budget-negative": (
        {"monthly_budget_usd": "-5"},
        r"key 'monthly_budget_usd': Input should be greater than 0",
    ),
    "idle-alarm-too-short": (
        {"idle_alarm_minutes": "2"},
        r"key 'idle_alarm_minutes': Input should be greater than or equal to 5",
    ),
    # The Lambda always sends the Qdrant API key (api-key header, every request:
    # https://qdrant.tech/documentation/cloud/authentication/), so only https will do.
    "qdrant-url-plain-http": (
        {"qdrant_url": "http://qdrant.example:6333"},
        r"key 'qdrant_url': must be https://: the Lambda sends the Qdrant API key",
    ),
    "unknown-model": (
        {"model": "twin-llama"},
        r"unknown model 'twin-llama'.*available: .*twin-llama-3\.1-8b",
    ),
}


def _build(context: dict[str, Any]) -> None:
    import aws_cdk as cdk

    from stacks.app_builder import build_app

    build_app(cdk.App(context={"aws:cdk:bundling-stacks": [], **context}))


@pytest.mark.parametrize(
    ("context", "expected"), list(CONTEXT_MISTAKES.values()), ids=list(CONTEXT_MISTAKES)
)
def test_context_mistake_fails_synth_naming_key_and_allowed_values(
    context: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _build(context)
    message = str(info.value)
    assert re.search(expected, message), message
    if "model" not in context:
        assert message.startswith("cdk context: key "), message


def test_several_context_mistakes_are_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        _build({"project": "X", "trace_sample_rate": "2", "alarm_email": "a@b.c"})
    lines = str(info.value).splitlines()
    assert [line.split("'")[1] for line in lines] == ["project", "trace_sample_rate"]


# model_config mistakes through build_app: the loader reads a temporary model_config folder.
MODEL_MISTAKES = {
    "yaml-syntax": ("tgi: {max_input_tokens: 10\n", r"m\.yaml: not valid YAML"),
    "unknown-field": (_with(quantise="awq"), r"m\.yaml: field 'quantise': unknown field"),
    "nested-unknown-field": (
        _with(**{"scaling.mode_": "always_on"}),
        r"m\.yaml: field 'scaling\.mode_': unknown field",
    ),
    "quantize-not-allowed": (
        _with(**{"tgi.quantize": "int3"}),
        r"field 'tgi\.quantize': .*'awq', .*'fp8'; got 'int3'",
    ),
    "scaling-mode-not-allowed": (
        _with(**{"scaling.mode": "sometimes"}),
        r"field 'scaling\.mode': .*'always_on' or 'scale_to_zero'; got 'sometimes'",
    ),
    "temperature-out-of-range": (
        _with(**{"generation.temperature": 3}),
        r"field 'generation\.temperature': Input should be less than or equal to 2",
    ),
    "top-p-zero": (
        _with(**{"generation.top_p": 0}),
        r"field 'generation\.top_p': Input should be greater than 0",
    ),
    "scale-to-zero-with-copies": (
        _with(**{"scaling.mode": "scale_to_zero", "scaling.min_copies": 1}),
        r"field 'scaling': scale_to_zero needs min_copies: 0",
    ),
    "health-check-too-short": (
        _with(startup_health_check_timeout_s=10),
        r"field 'startup_health_check_timeout_s': Input should be greater than or equal to 60",
    ),
    "cpu-share-above-instance": (
        _with(**{"compute.cpu_cores": 64}),
        r"field '\(top level\)': compute\.cpu_cores exceeds the 8 vCPUs",
    ),
    "instance-not-gpu": (
        _with(instance_type="ml.m5.xlarge"),
        r"field 'instance_type': 'ml\.m5\.xlarge' is not a known GPU instance; allowed: .*ml\.g5\.2xlarge",
    ),
    "empty-file": ("", r"m\.yaml: must be a YAML mapping of fields, got NoneType"),
}


@pytest.mark.parametrize(
    ("content", "expected"), list(MODEL_MISTAKES.values()), ids=list(MODEL_MISTAKES)
)
def test_model_config_mistake_fails_synth_naming_file_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, expected: str
) -> None:
    import functools

    import stacks.app_builder

    _write(tmp_path, content)
    monkeypatch.setattr(
        stacks.app_builder,
        "load_model_config",
        functools.partial(load_model_config, config_dir=tmp_path),
    )
    with pytest.raises(ConfigError, match=expected):
        _build({"model": "m"})


def test_app_py_prints_the_context_key_and_exits_1(tmp_path: Path) -> None:
    # Given a context mistake as the cdk CLI passes it; When app.py runs; Then it exits 1, no trace
    env = {
        **os.environ,
        "CDK_CONTEXT_JSON": '{"lambda_reserved_concurrency": "many", "alarm_email": "oncall"}',
        "CDK_OUTDIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1
    assert "configuration error:" in done.stderr and "Traceback" not in done.stderr
    assert "key 'lambda_reserved_concurrency': Input should be a valid integer" in done.stderr
    assert "key 'alarm_email': String should match pattern" in done.stderr


def test_a_misspelled_context_key_fails_instead_of_being_ignored() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'alarm_emial'.*known: .*alarm_email"):
        load_deployment_config({"alarm_emial": "oncall@example.com"})
    # keys CDK owns (prefixed or with a colon) are not ours to judge
    load_deployment_config({"@aws-cdk/core:checkSecretUsage": True, "aws:cdk:bundling-stacks": []})


def test_qdrant_url_must_be_http_or_https() -> None:
    with pytest.raises(ConfigError, match=r"key 'qdrant_url'"):
        load_deployment_config({"qdrant_url": "ftp://qdrant.example"})
    assert load_deployment_config({"qdrant_url": "https://q.example:6333"}).qdrant_url


# --------------------------------------------------------------------------- engine: vllm

VLLM_GOOD = yaml.safe_load((REPO / "model_config" / "twin-llama-3.1-8b-vllm.yaml").read_text())


def test_the_shipped_vllm_config_is_the_default_model_on_an_image_the_sdk_knows() -> None:
    """The vLLM version is one the sagemaker SDK's image config (`vllm`, AWS's DLC) lists."""
    from sagemaker.core import image_uris

    vllm, tgi = load_model_config("twin-llama-3.1-8b-vllm"), load_model_config("twin-llama-3.1-8b")
    assert (vllm.engine, tgi.engine) == ("vllm", "tgi")
    assert vllm.hf_model_id == tgi.hf_model_id and vllm.prompt_format == tgi.prompt_format
    known = image_uris.config_for_framework("vllm")["inference"]["versions"]
    assert vllm.vllm_version in known
    assert (vllm.max_input_tokens, vllm.max_total_tokens) == (2048, 4096)


def test_engine_lists_its_allowed_values(tmp_path: Path) -> None:
    message = _error(tmp_path, _with(engine="sglang"))
    assert "field 'engine'" in message and "'tgi' or 'vllm'" in message and "m.yaml" in message


def test_unknown_vllm_version_lists_the_sdk_versions(tmp_path: Path) -> None:
    message = _error(tmp_path, {**VLLM_GOOD, "vllm_version": "0.1.0"})
    assert "field 'vllm_version'" in message and "0.30.0" in message


def test_vllm_engine_needs_its_version_and_limits_and_takes_no_tgi_fields(tmp_path: Path) -> None:
    no_limits = {k: v for k, v in VLLM_GOOD.items() if k != "vllm"}
    assert "engine vllm needs 'vllm'" in _error(tmp_path, no_limits)
    mixed = {**VLLM_GOOD, "tgi_version": "3.3.6"}
    assert "'tgi_version' is for engine tgi" in _error(tmp_path, mixed)
    tgi_without_version = {k: v for k, v in GOOD.items() if k != "tgi_version"}
    assert "engine tgi needs 'tgi_version'" in _error(tmp_path, tgi_without_version)


def test_vllm_limits_are_checked_like_tgis(tmp_path: Path) -> None:
    vllm = {**VLLM_GOOD["vllm"], "max_input_tokens": 4096}
    assert "must be less than max_model_len" in _error(tmp_path, {**VLLM_GOOD, "vllm": vllm})
    vllm = {**VLLM_GOOD["vllm"], "gpu_memory_utilization": 1.5}
    assert "field 'vllm.gpu_memory_utilization'" in _error(tmp_path, {**VLLM_GOOD, "vllm": vllm})
    generation = {**VLLM_GOOD["generation"], "max_new_tokens_limit": 3000}
    message = _error(tmp_path, {**VLLM_GOOD, "generation": generation})
    assert "vllm.max_model_len - vllm.max_input_tokens (2048)" in message


def test_vllm_environment_uses_the_containers_sm_vllm_variables(tmp_path: Path) -> None:
    """AWS's vLLM DLC turns each SM_VLLM_<FLAG> into `vllm serve --<flag>`; SM_VLLM_MODEL takes a
    Hub id or a local folder (aws/model-hosting-container-standards docs/sagemaker/
    01_quickstart.md; https://aws.github.io/deep-learning-containers/vllm/configuration/)."""
    env = load_model_config("twin-llama-3.1-8b-vllm").container_environment()
    assert env["SM_VLLM_MODEL"] == "mlabonne/TwinLlama-3.1-8B-DPO"
    assert env["SM_VLLM_REVISION"] == "main"
    assert env["SM_VLLM_TENSOR_PARALLEL_SIZE"] == "1"
    assert env["SM_VLLM_MAX_MODEL_LEN"] == "4096"
    assert env["SM_VLLM_MAX_NUM_SEQS"] == "16"
    assert env["SM_VLLM_GPU_MEMORY_UTILIZATION"] == "0.9"
    assert not any(k.startswith(("HF_MODEL", "MAX_", "SM_NUM")) for k in env)  # no TGI variables
    # Staged weights: SageMaker puts them in /opt/ml/model, which SM_VLLM_MODEL then names
    sha = "a" * 40
    _write(tmp_path, {**VLLM_GOOD, "hf_revision": sha, "weights_s3_uri": "s3://bucket/w"})
    staged = load_model_config("m", tmp_path).container_environment()
    assert staged["SM_VLLM_MODEL"] == "/opt/ml/model" and "SM_VLLM_REVISION" not in staged


def test_the_runtime_profile_tells_the_lambda_the_engine() -> None:
    assert load_model_config("twin-llama-3.1-8b-vllm").runtime_profile()["engine"] == "vllm"
    assert load_model_config("twin-llama-3.1-8b").runtime_profile()["engine"] == "tgi"
