"""Settings from env vars (docs/CONTRACTS.md) and the Qdrant API key lookup."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from moto import mock_aws

from rag.settings import DEFAULT_PROFILE, ModelProfile, Settings, SettingsError

PROFILE: dict[str, Any] = {
    "name": "small",
    "model_id": "example/small",
    "revision": "0123abcd",
    "prompt_format": "chat",
    "max_input_tokens": 1024,
    "max_total_tokens": 2048,
    "generation": {
        "max_new_tokens": 128,
        "max_new_tokens_limit": 512,
        "temperature": 0.5,
        "top_p": 0.95,
    },
}


def test_defaults_match_the_contract() -> None:
    settings = Settings.from_env({})

    assert settings.model_profile == DEFAULT_PROFILE
    assert DEFAULT_PROFILE.model_id == "mlabonne/TwinLlama-3.1-8B-DPO"
    assert DEFAULT_PROFILE.prompt_format == "alpaca"
    assert (DEFAULT_PROFILE.max_input_tokens, DEFAULT_PROFILE.max_total_tokens) == (2048, 4096)
    assert (settings.llm_url, settings.llm_endpoint, settings.llm_api) == (None, None, "tgi")
    assert (
        settings.llm_connect_timeout_s,
        settings.llm_read_timeout_s,
        settings.llm_helper_timeout_s,
    ) == (2, 20, 4)
    assert settings.qdrant_timeout_s == 3
    assert (settings.rerank_enabled, settings.self_query_enabled) == (True, True)
    assert settings.expansion_n == 3
    assert (settings.trace_sample_rate, settings.trace_redaction) == (1, "none")
    assert settings.ort_threads == 1


def test_every_env_var_is_read() -> None:
    env = {
        "MODEL_PROFILE": json.dumps(PROFILE),
        "LLM_URL": "http://127.0.0.1:8080",
        "LLM_API": "openai",
        "LLM_ENDPOINT": "twin-endpoint",
        "LLM_INFERENCE_COMPONENT": "twin-ic",
        "LLM_CONNECT_TIMEOUT_S": "1.5",
        "LLM_READ_TIMEOUT_S": "25",
        "LLM_HELPER_TIMEOUT_S": "3",
        "QDRANT_URL": "https://qdrant.example:6333",
        "QDRANT_PATH": ":memory:",
        "QDRANT_API_KEY_SECRET": "qdrant/api-key",
        "QDRANT_TIMEOUT_S": "5",
        "EMBEDDING_MODEL_DIR": "/models/embedding",
        "RERANKER_MODEL_DIR": "/models/reranker",
        "MODEL_ASSET_S3_URI": "s3://bucket/models.zip",
        "RERANK_ENABLED": "false",
        "SELF_QUERY_ENABLED": "0",
        "EXPANSION_N": "4",
        "TRACE_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/1/traces",
        "TRACE_FILE": "/tmp/traces.jsonl",
        "TRACE_SAMPLE_RATE": "0.25",
        "TRACE_REDACTION": "hash_query",
        "ORT_THREADS": "2",
        "UNRELATED": "ignored",
    }

    settings = Settings.from_env(env)

    assert settings.model_profile == ModelProfile.model_validate(PROFILE)
    assert settings.llm_api == "openai"
    assert settings.llm_inference_component == "twin-ic"
    assert settings.llm_connect_timeout_s == 1.5
    assert settings.qdrant_api_key_secret == "qdrant/api-key"
    assert settings.model_asset_s3_uri == "s3://bucket/models.zip"
    assert (settings.rerank_enabled, settings.self_query_enabled) == (False, False)
    assert settings.expansion_n == 4
    assert settings.trace_sample_rate == 0.25
    assert settings.trace_redaction == "hash_query"
    assert settings.ort_threads == 2


def test_empty_values_count_as_unset() -> None:
    settings = Settings.from_env({"LLM_URL": "", "EXPANSION_N": " ", "MODEL_PROFILE": ""})

    assert settings.llm_url is None
    assert settings.expansion_n == 3
    assert settings.model_profile == DEFAULT_PROFILE


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MODEL_PROFILE": "{not json"}, "MODEL_PROFILE: not valid JSON"),
        (
            {"MODEL_PROFILE": json.dumps({**PROFILE, "prompt_format": "llama"})},
            "MODEL_PROFILE.prompt_format",
        ),
        (
            {"MODEL_PROFILE": json.dumps({**PROFILE, "max_input_tokens": 4096})},
            "max_input_tokens must be < max_total_tokens",
        ),
        (
            {
                "MODEL_PROFILE": json.dumps(
                    {**PROFILE, "generation": {**PROFILE["generation"], "max_new_tokens": 600}}
                )
            },
            "max_new_tokens must be <= max_new_tokens_limit",
        ),
        ({"EXPANSION_N": "0"}, "EXPANSION_N"),
        ({"TRACE_SAMPLE_RATE": "2"}, "TRACE_SAMPLE_RATE"),
        ({"TRACE_REDACTION": "all"}, "TRACE_REDACTION"),
        ({"LLM_API": "grpc"}, "LLM_API"),
        ({"MODEL_ASSET_S3_URI": "https://bucket/models.zip"}, "MODEL_ASSET_S3_URI"),
        ({"LLM_READ_TIMEOUT_S": "-1"}, "LLM_READ_TIMEOUT_S"),
    ],
)
def test_bad_values_fail_naming_the_env_var(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace(".", r"\.")):
        Settings.from_env(env)


def test_a_bad_value_is_not_echoed() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"ORT_THREADS": "s3cr3t-looking-value"})

    assert "s3cr3t" not in str(raised.value)


def test_the_local_api_key_is_used_without_a_secret_and_never_shown() -> None:
    settings = Settings.from_env({"QDRANT_API_KEY": "local-key-123"})

    assert settings.qdrant_api_key() == "local-key-123"
    assert "local-key-123" not in repr(settings)
    assert "local-key-123" not in settings.model_dump_json()


def test_no_key_configured_means_none() -> None:
    assert Settings.from_env({}).qdrant_api_key() is None


def test_the_secret_wins_over_the_local_key() -> None:
    asked: list[str] = []

    def fetch(name: str) -> str:
        asked.append(name)
        return "key-from-secrets-manager"

    settings = Settings.from_env({"QDRANT_API_KEY_SECRET": "qdrant/key", "QDRANT_API_KEY": "x"})

    assert settings.qdrant_api_key(fetch) == "key-from-secrets-manager"
    assert asked == ["qdrant/key"]


def test_a_json_secret_with_an_api_key_field_is_understood() -> None:
    settings = Settings.from_env({"QDRANT_API_KEY_SECRET": "qdrant/key"})

    assert settings.qdrant_api_key(lambda _: '{"api_key": "k-1"}') == "k-1"


def test_the_secret_is_read_through_powertools_parameters_and_cached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a secret in (moto's) Secrets Manager
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="eu-west-1")
        client.create_secret(Name="test/qdrant-cached", SecretString="first-key")
        settings = Settings.from_env({"QDRANT_API_KEY_SECRET": "test/qdrant-cached"})

        # When it is read, then rotated and read again within the cache age
        first = settings.qdrant_api_key()
        client.put_secret_value(SecretId="test/qdrant-cached", SecretString="second-key")
        second = settings.qdrant_api_key()

    # Then the cached value serves the second read
    assert (first, second) == ("first-key", "first-key")
