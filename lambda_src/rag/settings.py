"""The business Lambda's settings: one pydantic model of its env vars (docs/CONTRACTS.md).

Read once per container with `Settings.from_env(os.environ)`; nothing here touches the
environment at import time, so tests build settings from a plain dict.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from rag.domain.budget import DEFAULT_GENERATION_TOKENS_PER_S, DEFAULT_STREAM_BUDGET_S
from rag.urls import check_key_transport

SECRET_MAX_AGE_S = 300
"""How long a Secrets Manager value is cached in the container; a rotated key is picked up after."""

HASH_KEY_BYTES = 32
"""A local hash_query key: 256 random bits (RFC 2104 asks for at least the hash output, 32 bytes)."""

MAX_EXPANSION_N = 5
"""Upper bound on queries after expansion: each one costs an embedding and a search round."""


DEFAULT_RERANK_MAX_CANDIDATES = 6
DEFAULT_MAX_CHUNKS_PER_DOCUMENT = 1
"""Chunks the cross-encoder scores per request (at least k), the best by vector score: twice the
API's default k. Each (query, chunk) pair costs ~60-100 ms of one vCPU (tools/bench.py), so
scoring every candidate (up to 3 queries x 3 collections x k) was 1-3 s a request."""
DEFAULT_RERANK_MAX_LENGTH = 256
"""Tokens per (query, chunk) pair: a chunk is at most 256 embedder tokens, so this cuts only the
tail of long pairs (long queries) while halving the worst case of the model's 512."""
DEFAULT_STREAM_STALL_S = 30.0
"""Covers the prefill of a full prompt before the first token; longer silence is a stall."""
MIN_RERANK_MAX_LENGTH = 16
MAX_RERANK_MAX_LENGTH = 512
"""ms-marco-MiniLM's position embeddings end here."""


class GenerationDefaults(BaseModel):
    """A model config's `generation:` block (model_config/*.yaml, validated by stacks.config) and
    what the runtime applies: one model, one set of defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int = Field(default=512, ge=1)
    max_new_tokens_limit: int = Field(default=1024, ge=1)
    """The most a request may ask for."""
    temperature: float = Field(default=0.01, ge=0, le=2)
    """Near-greedy: the twin answers from its context rather than inventing."""
    top_p: float = Field(default=0.9, gt=0, le=1)

    @model_validator(mode="after")
    def _default_within_limit(self) -> GenerationDefaults:
        if self.max_new_tokens > self.max_new_tokens_limit:
            raise ValueError("max_new_tokens must be <= max_new_tokens_limit")
        return self


class ModelProfile(BaseModel):
    """The runtime part of a model config (`stacks.config.ModelConfig.runtime_profile()`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: str = Field(min_length=1)
    model_id: str = Field(min_length=1)
    revision: str = Field(min_length=1)
    engine: Literal["tgi", "vllm"] = "tgi"
    """The SageMaker endpoint's container, which decides the request bodies sent to it."""
    prompt_format: Literal["alpaca", "chat"]
    max_input_tokens: int = Field(ge=1)
    max_total_tokens: int = Field(ge=2)
    generation: GenerationDefaults

    @model_validator(mode="after")
    def _limits_consistent(self) -> ModelProfile:
        if self.max_input_tokens >= self.max_total_tokens:
            raise ValueError("max_input_tokens must be < max_total_tokens")
        if self.generation.max_new_tokens_limit >= self.max_total_tokens:
            raise ValueError("generation.max_new_tokens_limit must be < max_total_tokens")
        return self


DEFAULT_PROFILE = ModelProfile(
    name="twin-llama-3.1-8b",
    model_id="mlabonne/TwinLlama-3.1-8B-DPO",
    # Local mode only: deployed stacks always pass MODEL_PROFILE with the pinned commit.
    revision="main",
    prompt_format="alpaca",
    max_input_tokens=2048,
    max_total_tokens=4096,
    # As model_config/twin-llama-3.1-8b.yaml's `generation:` (the rest are the model's defaults).
    generation=GenerationDefaults(max_new_tokens_limit=2048),
)


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the env var."""


def _env(name: str) -> Any:
    return Field(default=None, validation_alias=name)


class Settings(BaseModel):
    """Env vars of the business Lambda. Field aliases are the env var names."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    model_profile: ModelProfile = Field(default=DEFAULT_PROFILE, validation_alias="MODEL_PROFILE")
    llm_url: str | None = _env("LLM_URL")
    llm_api: Literal["tgi", "openai"] = Field(default="tgi", validation_alias="LLM_API")
    llm_endpoint: str | None = _env("LLM_ENDPOINT")
    llm_inference_component: str | None = _env("LLM_INFERENCE_COMPONENT")
    llm_connect_timeout_s: float = Field(default=2, gt=0, validation_alias="LLM_CONNECT_TIMEOUT_S")
    llm_read_timeout_s: float = Field(default=20, gt=0, validation_alias="LLM_READ_TIMEOUT_S")
    llm_helper_timeout_s: float = Field(default=4, gt=0, validation_alias="LLM_HELPER_TIMEOUT_S")
    qdrant_url: str | None = _env("QDRANT_URL")
    qdrant_path: str | None = _env("QDRANT_PATH")
    qdrant_api_key_secret: str | None = _env("QDRANT_API_KEY_SECRET")
    qdrant_api_key_local: SecretStr | None = Field(default=None, validation_alias="QDRANT_API_KEY")
    qdrant_timeout_s: float = Field(default=3, gt=0, validation_alias="QDRANT_TIMEOUT_S")
    embedding_model_dir: str | None = _env("EMBEDDING_MODEL_DIR")
    reranker_model_dir: str | None = _env("RERANKER_MODEL_DIR")
    model_asset_s3_uri: str | None = _env("MODEL_ASSET_S3_URI")
    rerank_enabled: bool = Field(default=True, validation_alias="RERANK_ENABLED")
    self_query_enabled: bool = Field(default=True, validation_alias="SELF_QUERY_ENABLED")
    expansion_n: int = Field(default=3, ge=1, le=MAX_EXPANSION_N, validation_alias="EXPANSION_N")
    trace_queue_url: str | None = _env("TRACE_QUEUE_URL")
    trace_file: str | None = _env("TRACE_FILE")
    trace_sample_rate: float = Field(default=1, ge=0, le=1, validation_alias="TRACE_SAMPLE_RATE")
    trace_redaction: Literal["none", "hash_query", "drop_texts"] = Field(
        default="none", validation_alias="TRACE_REDACTION"
    )
    trace_hash_key_secret: str | None = _env("TRACE_HASH_KEY_SECRET")
    """AWS: the Secrets Manager secret (created by the stack) holding hash_query's HMAC key."""
    trace_hash_key_file: str | None = _env("TRACE_HASH_KEY_FILE")
    """Local mode: a key file, created (mode 0600) with a random key when missing."""
    ort_threads: int = Field(default=1, ge=1, validation_alias="ORT_THREADS")
    request_budget_s: float | None = Field(default=None, gt=0, validation_alias="REQUEST_BUDGET_S")
    """Time a request may take end to end (the Lambda sets it just under its timeout); the
    generation call gets what is left after retrieval, less what the trace send may need."""
    generation_tokens_per_s: float = Field(
        default=DEFAULT_GENERATION_TOKENS_PER_S, gt=0, validation_alias="GENERATION_TOKENS_PER_S"
    )
    """Decode speed (tokens/s) the buffered route sizes max_new_tokens by (rag.domain.budget)."""
    stream_budget_s: float | None = Field(
        default=DEFAULT_STREAM_BUDGET_S, gt=0, validation_alias="STREAM_BUDGET_S"
    )
    """Time a streamed answer may take end to end (its own limit, not REQUEST_BUDGET_S)."""
    llm_stream_stall_s: float = Field(
        default=DEFAULT_STREAM_STALL_S, gt=0, validation_alias="LLM_STREAM_STALL_S"
    )
    """A streaming model that sends nothing for this long is stalled: the stream ends in error."""
    rerank_max_candidates: int = Field(
        default=DEFAULT_RERANK_MAX_CANDIDATES, ge=1, validation_alias="RERANK_MAX_CANDIDATES"
    )
    max_chunks_per_document: int = Field(
        default=DEFAULT_MAX_CHUNKS_PER_DOCUMENT, ge=0, validation_alias="MAX_CHUNKS_PER_DOCUMENT"
    )
    """At most this many chunks of one document in the top k and in the rerank window (0: no
    limit), so an answer spread over several sources is not crowded out by one long article."""
    rerank_max_length: int = Field(
        default=DEFAULT_RERANK_MAX_LENGTH,
        ge=MIN_RERANK_MAX_LENGTH,
        le=MAX_RERANK_MAX_LENGTH,
        validation_alias="RERANK_MAX_LENGTH",
    )

    cors_origins: tuple[str, ...] = Field(default=(), validation_alias="CORS_ORIGINS")
    """Browser origins allowed to call the API (comma-separated; the stack's `cors_origins`)."""

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origin_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v.strip().rstrip("/") for v in value.split(",") if v.strip())
        return value

    @field_validator("model_profile", mode="before")
    @classmethod
    def _profile_from_json(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg})") from None

    @field_validator("model_asset_s3_uri")
    @classmethod
    def _s3_uri(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("s3://"):
            raise ValueError("must look like s3://bucket/key.zip")
        return value

    @model_validator(mode="after")
    def _key_over_tls(self) -> Settings:
        if self.qdrant_url and (self.qdrant_api_key_secret or self.qdrant_api_key_local):
            check_key_transport(self.qdrant_url, what="QDRANT_URL")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Settings from an environment mapping; empty values count as unset."""
        names = {f.validation_alias for f in cls.model_fields.values()}
        present = {k: v for k, v in environ.items() if k in names and v.strip() != ""}
        try:
            return cls.model_validate(present)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None

    def qdrant_api_key(self, fetch_secret: Callable[[str], str] | None = None) -> str | None:
        """The Qdrant API key: Secrets Manager when QDRANT_API_KEY_SECRET is set (cached for
        SECRET_MAX_AGE_S), else the local-only QDRANT_API_KEY, else None. Never log the result.

        The secret may hold the bare key or a JSON object with an `api_key` field.
        """
        if self.qdrant_api_key_secret:
            fetch = fetch_secret or _powertools_secret
            return _key_from_secret(fetch(self.qdrant_api_key_secret))
        if self.qdrant_api_key_local is not None:
            return self.qdrant_api_key_local.get_secret_value()
        return None

    def trace_hash_key(self, fetch_secret: Callable[[str], str] | None = None) -> bytes | None:
        """hash_query's HMAC key (None for the other modes): the TRACE_HASH_KEY_SECRET secret
        (cached for SECRET_MAX_AGE_S), else the TRACE_HASH_KEY_FILE file. Never log it."""
        if self.trace_redaction != "hash_query":
            return None
        if self.trace_hash_key_secret:
            fetch = fetch_secret or _powertools_secret
            return fetch(self.trace_hash_key_secret).strip().encode("utf-8")
        if self.trace_hash_key_file:
            return _key_file(Path(self.trace_hash_key_file))
        raise SettingsError(
            "TRACE_REDACTION=hash_query needs a key: TRACE_HASH_KEY_SECRET (a Secrets Manager "
            "secret, as the stack sets) or TRACE_HASH_KEY_FILE (local mode)"
        )


def _key_file(path: Path) -> bytes:
    """The key in `path`, created first when missing: O_EXCL so two processes starting at once
    cannot both write one, mode 0600 from the start so the key is never readable by others."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(secrets.token_hex(HASH_KEY_BYTES) + "\n")
    return path.read_bytes().strip()


def _powertools_secret(name: str) -> str:
    from aws_lambda_powertools.utilities.parameters import get_secret

    return str(get_secret(name, max_age=SECRET_MAX_AGE_S))


def _key_from_secret(value: str) -> str:
    text = value.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(parsed, dict) and isinstance(parsed.get("api_key"), str):
            return str(parsed["api_key"])
    return text


def _describe(exc: ValidationError) -> str:
    """'ENV_VAR[.field]: message' for each error, never echoing the offending value."""
    parts = []
    for err in exc.errors(include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        ctx = err.get("ctx") or {}
        message = (
            str(ctx["error"]) if err["type"] == "value_error" and "error" in ctx else err["msg"]
        )
        parts.append(f"{loc}: {message}" if loc else message)
    return "; ".join(parts)
