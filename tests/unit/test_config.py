"""Model config and cdk context validation: each kind of mistake names file, field and what is allowed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def _write(tmp_path: Path, data, name: str = "m") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _with(**changes):
    data = {**GOOD, **{k: v for k, v in changes.items() if "." not in k}}
    for dotted, value in changes.items():
        if "." in dotted:
            section, field = dotted.split(".")
            data[section] = {**data.get(section, {}), field: value}
    return data


def _error(tmp_path: Path, data) -> str:
    _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_model_config("m", tmp_path)
    return str(info.value)


def test_shipped_configs_are_valid_and_derive_gpus_from_the_instance():
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


def test_unknown_model_lists_the_available_ones(tmp_path):
    _write(tmp_path, GOOD, "known")
    with pytest.raises(ConfigError, match=r"unknown model 'nope'.*available: known"):
        load_model_config("nope", tmp_path)


def test_invalid_yaml_names_the_file(tmp_path):
    assert "m.yaml: not valid YAML" in _error(tmp_path, "hf_model_id: [unclosed\n")


def test_a_list_instead_of_a_mapping(tmp_path):
    assert "must be a YAML mapping" in _error(tmp_path, "- a\n- b\n")


def test_unknown_field_is_named(tmp_path):
    message = _error(tmp_path, _with(max_input_tokens=10))
    assert "field 'max_input_tokens': unknown field" in message


def test_missing_field_is_named(tmp_path):
    data = dict(GOOD)
    del data["instance_type"]
    assert "field 'instance_type': Field required" in _error(tmp_path, data)


def test_wrong_type_is_named(tmp_path):
    assert "field 'tgi.max_input_tokens'" in _error(
        tmp_path, _with(**{"tgi.max_input_tokens": "lots"})
    )


def test_prompt_format_lists_allowed_values(tmp_path):
    message = _error(tmp_path, _with(prompt_format="vicuna"))
    assert "field 'prompt_format'" in message and "'alpaca' or 'chat'" in message


def test_unknown_instance_lists_gpu_instances(tmp_path):
    message = _error(tmp_path, _with(instance_type="ml.m5.xlarge"))
    assert "field 'instance_type'" in message and "ml.g5.2xlarge" in message


def test_unknown_tgi_version_lists_the_sdk_versions(tmp_path):
    message = _error(tmp_path, _with(tgi_version="9.9.9"))
    assert "field 'tgi_version'" in message and "3.3.6" in message


def test_input_tokens_must_leave_room_to_generate(tmp_path):
    message = _error(tmp_path, _with(**{"tgi.max_input_tokens": 4096}))
    assert "max_input_tokens (4096) must be less than max_total_tokens (4096)" in message


def test_prefill_below_input_is_rejected(tmp_path):
    message = _error(tmp_path, _with(**{"tgi.max_batch_prefill_tokens": 1000}))
    assert "max_batch_prefill_tokens (1000) must be at least max_input_tokens (2048)" in message


def test_batch_total_below_total_is_rejected(tmp_path):
    assert "max_batch_total_tokens (2000)" in _error(
        tmp_path, _with(**{"tgi.max_batch_total_tokens": 2000})
    )


def test_generation_limit_must_fit_the_token_budget(tmp_path):
    message = _error(tmp_path, _with(**{"generation.max_new_tokens_limit": 4000}))
    assert "max_new_tokens_limit (4000) must be at most" in message


def test_gpu_count_above_the_instance_is_rejected(tmp_path):
    assert "exceeds the 1 GPU(s) of ml.g5.2xlarge" in _error(tmp_path, _with(gpu_count=4))


def test_always_on_cannot_have_zero_copies(tmp_path):
    message = _error(tmp_path, _with(**{"scaling.min_copies": 0}))
    assert "field 'scaling'" in message and "always_on needs min_copies >= 1" in message


def test_bad_hub_id(tmp_path):
    assert "owner/name" in _error(tmp_path, _with(hf_model_id="not an id"))


def test_name_must_match_the_file(tmp_path):
    assert "must match the file name" in _error(tmp_path, _with(name="other"))


def test_context_mistakes_name_the_key():
    with pytest.raises(ConfigError, match=r"cdk context: key 'api_rate_limit_rps'"):
        load_deployment_config({"api_rate_limit_rps": "-1"})
    with pytest.raises(ConfigError, match=r"key 'cors_origins'.*https://"):
        load_deployment_config({"cors_origins": "http://insecure.example"})
    with pytest.raises(
        ConfigError, match=r"key 'trace_redaction'.*'none', 'hash_query' or 'drop_texts'"
    ):
        load_deployment_config({"trace_redaction": "all"})


def test_context_strings_from_the_command_line_are_coerced():
    config = load_deployment_config(
        {"api_rate_limit_rps": "25", "cors_origins": "https://a.example, https://b.example"}
    )
    assert config.api_rate_limit_rps == 25
    assert config.cors_origins == ["https://a.example", "https://b.example"]


def test_synth_fails_with_a_clear_message_for_an_unknown_model(tmp_path):
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
