"""Validated configuration, built once at synth with no AWS call.

- `ModelConfig`: one `model_config/<name>.yaml` per deployable model (DESIGN 3.5).
- `DeploymentConfig`: account-level settings from cdk context (`cdk.json` or `-c key=value`).

Every mistake raises `ConfigError` naming the file (or context key), the field and what is allowed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rag.settings import GenerationDefaults
from stacks import tgi_image
from stacks.instances import GPU_INSTANCES, GpuInstance

CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_config"
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
MODEL_DIR = "/opt/ml/model"
"""Where SageMaker puts a model's data (ModelDataSource) inside the container."""
_HF_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LambdaArchitecture = Literal["x86_64", "arm64"]
"""Lambda's names for its two instruction sets (CDK's `Architecture.name`)."""


class ConfigError(Exception):
    """A configuration mistake, phrased for the person who made it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TgiLimits(_Strict):
    """Token limits passed to TGI (its launcher's env vars of the same names, upper-cased)."""

    max_input_tokens: int = Field(gt=0)
    max_total_tokens: int = Field(gt=0)
    max_batch_prefill_tokens: int | None = Field(default=None, gt=0)
    max_batch_total_tokens: int | None = Field(default=None, gt=0)
    max_concurrent_requests: int = Field(default=128, gt=0)
    quantize: Literal["awq", "gptq", "bitsandbytes", "bitsandbytes-nf4", "eetq", "fp8"] | None = (
        None
    )

    @model_validator(mode="after")
    def _consistent(self) -> TgiLimits:
        if self.max_input_tokens >= self.max_total_tokens:
            raise ValueError(
                f"max_input_tokens ({self.max_input_tokens}) must be less than "
                f"max_total_tokens ({self.max_total_tokens}): the rest is room to generate"
            )
        if self.prefill_tokens < self.max_input_tokens:
            raise ValueError(
                f"max_batch_prefill_tokens ({self.prefill_tokens}) must be at least "
                f"max_input_tokens ({self.max_input_tokens})"
            )
        if self.max_batch_total_tokens is not None and (
            self.max_batch_total_tokens < self.max_total_tokens
        ):
            raise ValueError(
                f"max_batch_total_tokens ({self.max_batch_total_tokens}) must be at least "
                f"max_total_tokens ({self.max_total_tokens})"
            )
        return self

    @property
    def prefill_tokens(self) -> int:
        return self.max_batch_prefill_tokens or self.max_input_tokens + 50


class VllmLimits(_Strict):
    """vLLM's serving limits, passed as `SM_VLLM_<FLAG>` variables (AWS's vLLM DLC turns each into
    the `vllm serve --<flag>` of that name). max_model_len is vLLM's prompt + generation bound."""

    max_input_tokens: int = Field(gt=0)
    """Not a vLLM flag: the API trims prompts to it (vLLM rejects longer ones with a 400)."""
    max_model_len: int = Field(gt=0)
    max_num_seqs: int = Field(default=64, gt=0)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=0.98)
    """The share of each GPU vLLM takes for weights + activations + KV cache (its default 0.9)."""

    @model_validator(mode="after")
    def _consistent(self) -> VllmLimits:
        if self.max_input_tokens >= self.max_model_len:
            raise ValueError(
                f"max_input_tokens ({self.max_input_tokens}) must be less than "
                f"max_model_len ({self.max_model_len}): the rest is room to generate"
            )
        return self


class Scaling(_Strict):
    """`always_on` keeps min_copies >= 1 warm; `scale_to_zero` releases the GPU when idle.

    always_on tracks concurrent requests per copy (high resolution); scale_to_zero follows
    AWS's documented setup: target tracking on invocations per copy (per minute), which scales
    in to zero once traffic stops, plus a step policy out of zero (TgiEndpoint)."""

    mode: Literal["always_on", "scale_to_zero"] = "always_on"
    min_copies: int | None = Field(default=None, ge=0)
    max_copies: int = Field(default=1, ge=1, le=16)
    target_concurrent_requests_per_copy: int = Field(default=4, ge=1, le=1000)
    scale_out_cooldown_s: int = Field(default=120, ge=0, le=3600)
    scale_in_cooldown_s: int = Field(default=600, ge=0, le=3600)
    target_invocations_per_copy_per_minute: int = Field(default=5, ge=1, le=10000)

    @model_validator(mode="after")
    def _copies(self) -> Scaling:
        low = self.effective_min_copies
        if self.mode == "always_on" and low < 1:
            raise ValueError("always_on needs min_copies >= 1 (use mode: scale_to_zero for 0)")
        if self.mode == "scale_to_zero" and low != 0:
            raise ValueError("scale_to_zero needs min_copies: 0 (or leave it out)")
        if low > self.max_copies:
            raise ValueError(f"min_copies ({low}) must not exceed max_copies ({self.max_copies})")
        return self

    @property
    def effective_min_copies(self) -> int:
        if self.min_copies is not None:
            return self.min_copies
        return 0 if self.mode == "scale_to_zero" else 1


class ComputeShare(_Strict):
    """What one inference component copy reserves on the instance (derived when omitted)."""

    cpu_cores: float | None = Field(default=None, gt=0)
    memory_mib: int | None = Field(default=None, ge=1024)


class ModelConfig(_Strict):
    name: str
    hf_model_id: str
    hf_revision: str = Field(min_length=1)
    hf_token_secret_name: str | None = None
    weights_s3_uri: str | None = Field(
        default=None, pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?$"
    )
    """Where `make stage-weights` copied the weights (`<uri>/<hf_model_id>/<hf_revision>/`): the
    endpoint then loads them from S3 and needs no Hugging Face token at run time."""
    engine: Literal["tgi", "vllm"] = "tgi"
    """The serving container: Hugging Face TGI (the default) or AWS's vLLM DLC."""
    tgi_version: str | None = None
    vllm_version: str | None = None
    instance_type: str
    gpu_count: int | None = Field(default=None, ge=1)
    prompt_format: Literal["alpaca", "chat"]
    tgi: TgiLimits | None = None
    vllm: VllmLimits | None = None
    generation: GenerationDefaults = GenerationDefaults()
    scaling: Scaling = Scaling()
    compute: ComputeShare = ComputeShare()
    startup_health_check_timeout_s: int = Field(default=900, ge=60, le=3600)
    model_download_timeout_s: int = Field(default=900, ge=60, le=3600)

    @field_validator("hf_model_id")
    @classmethod
    def _hf_id(cls, value: str) -> str:
        if not _HF_ID_RE.match(value):
            raise ValueError(
                f"must look like 'owner/name' (a Hugging Face Hub model id), got {value!r}"
            )
        return value

    @field_validator("instance_type")
    @classmethod
    def _instance(cls, value: str) -> str:
        if value not in GPU_INSTANCES:
            raise ValueError(
                f"{value!r} is not a known GPU instance; allowed: {', '.join(GPU_INSTANCES)}"
            )
        return value

    @field_validator("tgi_version")
    @classmethod
    def _tgi_version(cls, value: str | None) -> str | None:
        return _known_version(value, tgi_image.TGI_FRAMEWORK, "TGI")

    @field_validator("vllm_version")
    @classmethod
    def _vllm_version(cls, value: str | None) -> str | None:
        return _known_version(value, tgi_image.VLLM_FRAMEWORK, "vLLM")

    @model_validator(mode="after")
    def _engine_fields(self) -> ModelConfig:
        """Each engine needs its own version and limits, and takes none of the other's."""
        own, other = ("tgi", "vllm") if self.engine == "tgi" else ("vllm", "tgi")
        for field in (f"{own}_version", own):
            if getattr(self, field) is None:
                raise ValueError(f"engine {self.engine} needs '{field}'")
        for field in (f"{other}_version", other):
            if getattr(self, field) is not None:
                raise ValueError(f"'{field}' is for engine {other}; this model's engine is {own}")
        return self

    @model_validator(mode="after")
    def _staged_weights(self) -> ModelConfig:
        if self.weights_s3_uri is None:
            return self
        if not self.revision_pinned:
            raise ValueError(
                "weights_s3_uri needs hf_revision to be a commit SHA (the staged copy is of one "
                "commit): run `make pin MODEL=<name>`"
            )
        if self.hf_token_secret_name:
            raise ValueError(
                "weights_s3_uri and hf_token_secret_name exclude each other: weights staged in "
                "S3 need no Hugging Face token at run time; remove hf_token_secret_name"
            )
        return self

    @model_validator(mode="after")
    def _fits(self) -> ModelConfig:
        gpus = self.instance.gpus
        if self.gpu_count is not None and self.gpu_count > gpus:
            raise ValueError(
                f"gpu_count {self.gpu_count} exceeds the {gpus} GPU(s) of {self.instance_type}"
            )
        room = self.max_total_tokens - self.max_input_tokens
        if self.generation.max_new_tokens_limit > room:
            total = "tgi.max_total_tokens" if self.engine == "tgi" else "vllm.max_model_len"
            raise ValueError(
                f"generation.max_new_tokens_limit ({self.generation.max_new_tokens_limit}) must be "
                f"at most {total} - {self.engine}.max_input_tokens ({room})"
            )
        if self.compute.cpu_cores is not None and self.compute.cpu_cores > self.instance.vcpus:
            raise ValueError(f"compute.cpu_cores exceeds the {self.instance.vcpus} vCPUs")
        if (
            self.compute.memory_mib is not None
            and self.compute.memory_mib > self.instance.memory_gib * 1024
        ):
            raise ValueError(
                f"compute.memory_mib exceeds the {self.instance.memory_gib} GiB of memory"
            )
        return self

    @property
    def limits(self) -> TgiLimits | VllmLimits:
        limits = self.tgi if self.engine == "tgi" else self.vllm
        assert limits is not None  # _engine_fields
        return limits

    @property
    def max_input_tokens(self) -> int:
        return self.limits.max_input_tokens

    @property
    def max_total_tokens(self) -> int:
        """Prompt + generation: TGI's MAX_TOTAL_TOKENS, vLLM's max_model_len."""
        if isinstance(self.limits, VllmLimits):
            return self.limits.max_model_len
        return self.limits.max_total_tokens

    @property
    def engine_version(self) -> str:
        version = self.tgi_version if self.engine == "tgi" else self.vllm_version
        assert version is not None  # _engine_fields
        return version

    @property
    def image_framework(self) -> str:
        """The sagemaker SDK's image config name for this engine."""
        return tgi_image.TGI_FRAMEWORK if self.engine == "tgi" else tgi_image.VLLM_FRAMEWORK

    @property
    def instance(self) -> GpuInstance:
        return GPU_INSTANCES[self.instance_type]

    @property
    def gpus(self) -> int:
        return self.gpu_count or self.instance.gpus

    @property
    def gpu_memory_gib(self) -> int:
        return self.gpus * self.instance.gpu_memory_gib_each

    @property
    def revision_pinned(self) -> bool:
        return bool(_SHA_RE.match(self.hf_revision))

    @property
    def cpu_cores(self) -> float:
        # Leave half the vCPUs to the platform's agents and the TGI router's tokenizers.
        return self.compute.cpu_cores or max(1, self.instance.vcpus // 2)

    @property
    def memory_mib(self) -> int:
        # TGI streams safetensors to the GPU; host memory mostly serves the router and tokenizer.
        return self.compute.memory_mib or self.instance.memory_gib * 1024 // 2

    @property
    def weights_s3_prefix(self) -> str | None:
        """The staged copy of this model at this revision (one layout, for the staging tool and
        the endpoint), ending in `/` as SageMaker's S3Prefix model data requires."""
        if self.weights_s3_uri is None:
            return None
        return f"{self.weights_s3_uri.rstrip('/')}/{self.hf_model_id}/{self.hf_revision}/"

    def container_environment(self) -> dict[str, str]:
        """The serving container's environment (no secrets: the HF token is added by reference)."""
        return self.tgi_environment() if self.engine == "tgi" else self.vllm_environment()

    def vllm_environment(self) -> dict[str, str]:
        """AWS's vLLM DLC (SageMaker variant): each `SM_VLLM_<FLAG>` becomes `vllm serve --<flag>`
        (aws/model-hosting-container-standards docs/sagemaker/01_quickstart.md; AWS DLC docs
        "vllm/configuration"). SM_VLLM_MODEL takes a Hub id or a local folder: staged weights
        are in MODEL_DIR. The served model name is the Hub id either way, so requests (and the
        local fake) name the same model."""
        assert self.vllm is not None
        source = (
            {"SM_VLLM_MODEL": MODEL_DIR}
            if self.weights_s3_uri
            else {"SM_VLLM_MODEL": self.hf_model_id, "SM_VLLM_REVISION": self.hf_revision}
        )
        return {
            **source,
            "SM_VLLM_SERVED_MODEL_NAME": self.hf_model_id,
            "SM_VLLM_TENSOR_PARALLEL_SIZE": str(self.gpus),
            "SM_VLLM_MAX_MODEL_LEN": str(self.vllm.max_model_len),
            "SM_VLLM_MAX_NUM_SEQS": str(self.vllm.max_num_seqs),
            "SM_VLLM_GPU_MEMORY_UTILIZATION": str(self.vllm.gpu_memory_utilization),
        }

    def tgi_environment(self) -> dict[str, str]:
        """The TGI container's environment (no secrets: the HF token is added by reference).

        With staged weights SageMaker places them in MODEL_DIR before the container starts, and
        TGI's SageMaker entrypoint passes HF_MODEL_ID on as its model id, a local folder here."""
        assert self.tgi is not None
        source = (
            {"HF_MODEL_ID": MODEL_DIR}
            if self.weights_s3_uri
            else {"HF_MODEL_ID": self.hf_model_id, "HF_MODEL_REVISION": self.hf_revision}
        )
        env = {
            **source,
            "SM_NUM_GPUS": str(self.gpus),
            "MAX_INPUT_TOKENS": str(self.tgi.max_input_tokens),
            "MAX_TOTAL_TOKENS": str(self.tgi.max_total_tokens),
            "MAX_BATCH_PREFILL_TOKENS": str(self.tgi.prefill_tokens),
            "MAX_CONCURRENT_REQUESTS": str(self.tgi.max_concurrent_requests),
        }
        if self.tgi.max_batch_total_tokens is not None:
            env["MAX_BATCH_TOTAL_TOKENS"] = str(self.tgi.max_batch_total_tokens)
        if self.tgi.quantize is not None:
            env["HF_MODEL_QUANTIZE"] = self.tgi.quantize
        if self.prompt_format == "chat":
            env["MESSAGES_API_ENABLED"] = "true"
        return env

    def runtime_profile(self) -> dict[str, Any]:
        """The `MODEL_PROFILE` the business Lambda reads (docs/CONTRACTS.md)."""
        return {
            "name": self.name,
            "model_id": self.hf_model_id,
            "revision": self.hf_revision,
            "engine": self.engine,
            "prompt_format": self.prompt_format,
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "generation": self.generation.model_dump(),
        }

    def runtime_profile_json(self) -> str:
        return json.dumps(self.runtime_profile(), separators=(",", ":"), sort_keys=True)


def _known_version(value: str | None, framework: str, engine: str) -> str | None:
    if value is None:
        return None
    allowed = tgi_image.supported_versions(framework)
    if value not in allowed:
        raise ValueError(
            f"{engine} {value!r} has no SageMaker image; allowed: {', '.join(allowed)}"
        )
    return value


def available_models(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in config_dir.glob("*.yaml"))


def _describe(errors: ValidationError, source: str) -> str:
    lines = []
    for err in errors.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field (check its spelling and nesting)"
        elif err["type"] == "literal_error":
            message = f"{message}; got {err['input']!r}"
        lines.append(f"{source}: field '{field}': {message}")
    return "\n".join(lines)


def load_model_config(name: str, config_dir: Path = CONFIG_DIR) -> ModelConfig:
    path = config_dir / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_models(config_dir)) or "(none)"
        raise ConfigError(f"unknown model {name!r}: no {path}; available: {known}")
    rel = _relative(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{rel}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{rel}: must be a YAML mapping of fields, got {type(data).__name__}")
    if data.setdefault("name", name) != name:
        raise ConfigError(
            f"{rel}: field 'name': must match the file name {name!r}, got {data['name']!r}"
        )
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, rel)) from None


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class DeploymentConfig(_Strict):
    """Account-level settings, from cdk context keys of the same names."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str = "twin-llama-3.1-8b"
    project: str = Field(default="llm-twin", pattern=r"^[a-z][a-z0-9-]{1,30}$")
    qdrant_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(:\d+)?(/\S*)?$")
    """The Lambda always has a Qdrant API key (created or named secret): https only."""
    qdrant_api_key_secret_name: str | None = None
    api_rate_limit_rps: float = Field(default=10, gt=0, le=10000)
    api_burst_limit: int = Field(default=20, ge=1, le=5000)
    api_quota_per_day: int = Field(default=5000, ge=1)
    cors_origins: list[str] = []
    alarm_email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    opik_workspace: str | None = None
    opik_project_name: str = "llm-twin"
    opik_api_key_secret_name: str | None = None
    trace_sample_rate: float = Field(default=1.0, ge=0, le=1)
    trace_redaction: Literal["none", "hash_query", "drop_texts"] = "none"
    lambda_reserved_concurrency: int | None = Field(default=None, ge=1)
    vpc_id: str | None = None
    vpc_endpoints: bool = True
    """With vpc_id: create the VPC endpoints the business Lambda needs (S3 gateway; Secrets
    Manager, SQS, SageMaker runtime interface endpoints). False when the VPC already has them."""
    api_gateway_account_role: bool = False
    """Create the region's API Gateway CloudWatch logging role (an account-wide singleton),
    retained on destroy. Off by default: preflight checks the account has one."""
    monthly_budget_usd: float | None = Field(default=None, gt=0)
    idle_alarm_minutes: int = Field(default=60, ge=5, le=1440)
    idle_scale_to_zero: bool = False
    embedding_model_dir: str | None = None
    reranker_model_dir: str | None = None
    lambda_architecture: LambdaArchitecture = "x86_64"
    """Every Lambda's CPU: arm64 (Graviton) costs ~20% less per GB-second; bundles then carry
    aarch64 wheels and the business Lambda the adapter layer built for arm64."""
    snapstart: bool = False
    """Lambda SnapStart on the business Lambda: API Gateway calls a published version's alias,
    restored from a snapshot taken after init (models loaded) instead of initializing anew."""

    @property
    def traces_enabled(self) -> bool:
        """Traces go to Opik (Comet), which needs an API key: without one nothing could take
        them, so no trace queue or forwarder is deployed and the Lambda sends none."""
        return self.opik_api_key_secret_name is not None

    @property
    def business_function_name(self) -> str:
        return f"{self.project}-rag"

    def stack_name(self, kind: str) -> str:
        """`LlmTwinEndpoint`, `LlmTwinApi`: the project name in CamelCase plus the stack's kind."""
        return "".join(part.capitalize() for part in self.project.split("-")) + kind.capitalize()

    @field_validator("qdrant_url")
    @classmethod
    def _tls_for_the_key(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith("https://"):
            raise ValueError(
                "must be https://: the Lambda sends the Qdrant API key with every request, "
                "and over http it would cross the internet in clear"
            )
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        if isinstance(value, str):  # `-c cors_origins=https://a.example,https://b.example`
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _https_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not re.match(r"^https://[^/\s*]+$", origin):
                raise ValueError(f"{origin!r} must be an https:// origin without path or wildcard")
        return value


APP_CONTEXT_KEYS = frozenset({"account", "region", "bundle"})
"""Plain context keys the app reads besides DeploymentConfig's fields."""
_PLAIN_KEY = re.compile(r"^[a-z][a-z0-9_]*$")


def load_deployment_config(context: Mapping[str, Any]) -> DeploymentConfig:
    """Validate the cdk context values this app reads. Keys CDK owns carry a prefix or a colon
    (`@aws-cdk/...`, `aws:cdk:...`, lookups); any other key must be one of ours, so a typo such as
    `-c alarm_emial=...` fails instead of being silently ignored."""
    allowed = set(DeploymentConfig.model_fields) | APP_CONTEXT_KEYS
    unknown = sorted(k for k in context if _PLAIN_KEY.match(k) and k not in allowed)
    if unknown:
        raise ConfigError(
            f"cdk context: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(allowed))}"
        )
    known = {
        k: v for k, v in context.items() if k in DeploymentConfig.model_fields and v is not None
    }
    try:
        return DeploymentConfig.model_validate(known)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, "cdk context").replace("field '", "key '")) from None
