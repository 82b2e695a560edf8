"""Checks that a deploy of the selected model can succeed, before spending an hour on it.

`python -m tools.preflight [--model NAME]` (`make preflight`) prints one line per check,
`PASS|FAIL|SKIP <check>: <why>`, and exits non-zero when any check fails:

- aws-credentials: a boto3 session with credentials and a region (STS GetCallerIdentity).
- service-quota: `<instance type> for endpoint usage` covers the instances at max scale.
- hf-token, hub-model, hub-revision: the model is on the Hub at the revision, readable with the token
  the endpoint will use (gated models: the Secrets Manager secret, or HF_TOKEN for the check).
- gpu-memory: weights + KV cache for the engine's limits + overhead fit the instance's GPU memory
  (vLLM: within the gpu_memory_utilization share it takes, its KV cache holding at least one
  max_model_len sequence, or it refuses to start).
- tgi-limits / vllm-limits: max_total_tokens (vLLM: max_model_len) within the model's
  max_position_embeddings.
- qdrant: the collections exist with one unnamed 384-d vector (when a Qdrant URL is configured).
- api-gateway-logging-role: the region's API Gateway account settings name a CloudWatch Logs
  role that exists (stage access and execution logging need it; the stack does not own it).
- lambda-concurrency: reserving `lambda_reserved_concurrency` leaves Lambda's minimum of 100
  unreserved concurrent executions in the account.

Every client is injectable so tests run the real checks against moto and fakes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from rag.domain.ports import COLLECTIONS, EMBEDDING_DIM
from rag.urls import redact_url
from stacks.config import (
    ConfigError,
    DeploymentConfig,
    ModelConfig,
    load_deployment_config,
    load_model_config,
)

Status = Literal["PASS", "FAIL", "SKIP"]

REPO_ROOT = Path(__file__).resolve().parent.parent
QDRANT_TIMEOUT_S = 5
HUB_TIMEOUT_S = 15

GIB = 1024**3
# Bytes per parameter of each safetensors dtype the Hub reports in `safetensors.parameters`.
SAFETENSORS_DTYPE_BYTES: dict[str, float] = {
    "F64": 8, "I64": 8, "F32": 4, "I32": 4, "U32": 4, "BF16": 2, "F16": 2, "I16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip
CONFIG_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# TGI quantizes 16-bit checkpoints while loading; awq/gptq checkpoints are already packed (I32).
LOAD_TIME_QUANT_BYTES = {"bitsandbytes": 1.0, "eetq": 1.0, "fp8": 1.0, "bitsandbytes-nf4": 0.5}
# CUDA context, cuBLAS/NCCL workspaces and TGI's CUDA graphs: measured TGI deployments use ~1-2 GiB.
CUDA_OVERHEAD_GIB_PER_GPU = 1.5
# A prefill holds ~3 MLP intermediate activations per token (gate, up, activation) at once.
PREFILL_ACTIVATIONS_PER_TOKEN = 3


@dataclass(frozen=True)
class CheckResult:
    status: Status
    check: str
    why: str

    def line(self) -> str:
        return f"{self.status} {self.check}: {self.why}"


# --- AWS: credentials and quota ----------------------------------------------------------------


def check_aws(session: boto3.Session) -> CheckResult:
    how = (
        "set credentials with `aws configure` (or `aws sso login` / AWS_PROFILE=<profile>) and a region "
        "with AWS_DEFAULT_REGION=<region> or `aws configure set region <region>`"
    )
    if session.get_credentials() is None:
        return CheckResult("FAIL", "aws-credentials", f"no AWS credentials found; {how}")
    if not session.region_name:
        return CheckResult("FAIL", "aws-credentials", f"no AWS region set; {how}")
    try:
        identity = session.client("sts").get_caller_identity()
    except NoCredentialsError:
        return CheckResult("FAIL", "aws-credentials", f"no AWS credentials found; {how}")
    except (ClientError, BotoCoreError) as exc:
        return CheckResult("FAIL", "aws-credentials", f"credentials rejected by STS ({exc}); {how}")
    return CheckResult(
        "PASS",
        "aws-credentials",
        f"account {identity['Account']} as {identity['Arn']} in {session.region_name}",
    )


def copies_per_instance(config: ModelConfig) -> int:
    """How many copies of the inference component one instance holds (GPUs, CPUs and memory)."""
    inst = config.instance
    return max(
        1,
        min(
            inst.gpus // config.gpus,
            int(inst.vcpus // config.cpu_cores),
            inst.memory_gib * 1024 // config.memory_mib,
        ),
    )


def instances_needed(config: ModelConfig) -> int:
    return math.ceil(config.scaling.max_copies / copies_per_instance(config))


def quota_name(instance_type: str) -> str:
    return f"{instance_type} for endpoint usage"


def _find_quota(client: Any, operation: str, name: str) -> dict[str, Any] | None:
    for page in client.get_paginator(operation).paginate(ServiceCode="sagemaker"):
        for quota in page.get("Quotas", []):
            if quota.get("QuotaName") == name:
                return dict(quota)
    return None


def check_quota(config: ModelConfig, client: Any, region: str) -> CheckResult:
    """Applied quota first; AWS lists only quotas with an applied value there, so fall back to defaults."""
    name = quota_name(config.instance_type)
    need = instances_needed(config)
    try:
        quota = _find_quota(client, "list_service_quotas", name) or _find_quota(
            client, "list_aws_default_service_quotas", name
        )
    except (ClientError, BotoCoreError) as exc:
        return CheckResult(
            "FAIL", "service-quota", f"cannot read Service Quotas for sagemaker: {exc}"
        )
    if quota is None:
        return CheckResult(
            "FAIL",
            "service-quota",
            f"no quota named '{name}' in {region}: the instance type may not exist there",
        )
    have = int(quota["Value"])
    scale = f"{config.scaling.max_copies} copies at max scale, {copies_per_instance(config)} per instance"
    if have >= need:
        return CheckResult(
            "PASS", "service-quota", f"'{name}' is {have} in {region}; needs {need} ({scale})"
        )
    code = quota["QuotaCode"]
    return CheckResult(
        "FAIL",
        "service-quota",
        f"'{name}' is {have} in {region}; needs {need} ({scale}). Raise it at "
        f"https://{region}.console.aws.amazon.com/servicequotas/home/services/sagemaker/quotas/{code} or run "
        f"`aws service-quotas request-service-quota-increase --service-code sagemaker --quota-code {code} "
        f"--desired-value {need} --region {region}`",
    )


APIGW_LOGS_ROLE_NAME = "apigateway-cloudwatch-logs"
APIGW_LOGS_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
LAMBDA_MIN_UNRESERVED = 100
"""Lambda keeps at least this many concurrent executions unreserved per account and region."""


def _apigw_role_fix(account: str, region: str) -> str:
    trust = (
        '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":'
        '{"Service":"apigateway.amazonaws.com"},"Action":"sts:AssumeRole"}]}'
    )
    return (
        "one-time fix for the account and region: "
        f"`aws iam create-role --role-name {APIGW_LOGS_ROLE_NAME} --assume-role-policy-document "
        f"'{trust}'` then `aws iam attach-role-policy --role-name {APIGW_LOGS_ROLE_NAME} "
        f"--policy-arn {APIGW_LOGS_POLICY}` then `aws apigateway update-account --region {region} "
        f"--patch-operations op=replace,path=/cloudwatchRoleArn,value=arn:aws:iam::{account}:role/"
        f"{APIGW_LOGS_ROLE_NAME}`; or deploy with -c api_gateway_account_role=true (the stack "
        "then creates the role and keeps it on destroy)"
    )


def check_api_gateway_role(
    apigateway: Any, iam: Any, *, account: str, region: str, stack_creates_it: bool
) -> CheckResult:
    """API Gateway writes stage logs with the role in its account settings; without one, a stage
    with logging enabled fails to deploy, and a role deleted since breaks logging silently."""
    name = "api-gateway-logging-role"
    if stack_creates_it:
        return CheckResult("PASS", name, "created by the stack (api_gateway_account_role=true)")
    try:
        arn = apigateway.get_account().get("cloudwatchRoleArn")
    except (ClientError, BotoCoreError) as exc:
        return CheckResult("FAIL", name, f"cannot read API Gateway account settings: {exc}")
    if not arn:
        return CheckResult(
            "FAIL",
            name,
            f"API Gateway in {region} has no CloudWatch Logs role; "
            + _apigw_role_fix(account, region),
        )
    try:
        iam.get_role(RoleName=arn.rsplit("/", 1)[-1])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchEntity":
            return CheckResult("FAIL", name, f"cannot read role {arn}: {exc}")
        return CheckResult(
            "FAIL",
            name,
            f"API Gateway in {region} points at {arn}, which no longer exists; "
            + _apigw_role_fix(account, region),
        )
    return CheckResult("PASS", name, f"API Gateway in {region} logs with {arn}")


def check_lambda_concurrency(
    lambda_client: Any, *, function_name: str, reserve: int | None
) -> CheckResult:
    name = "lambda-concurrency"
    try:
        limit = lambda_client.get_account_settings()["AccountLimit"]
        unreserved = int(limit["UnreservedConcurrentExecutions"])
        if reserve is None:
            return CheckResult(
                "PASS", name, f"no reserved concurrency asked; {unreserved} unreserved"
            )
        try:  # a redeploy: this function's current reservation is given back first
            current = lambda_client.get_function_concurrency(FunctionName=function_name)
            unreserved += int(current.get("ReservedConcurrentExecutions") or 0)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
    except (ClientError, BotoCoreError) as exc:
        return CheckResult("FAIL", name, f"cannot read Lambda account settings: {exc}")
    left = unreserved - reserve
    if left >= LAMBDA_MIN_UNRESERVED:
        return CheckResult(
            "PASS", name, f"reserving {reserve} leaves {left} of {unreserved} unreserved"
        )
    return CheckResult(
        "FAIL",
        name,
        f"reserving {reserve} would leave {left} unreserved concurrent executions; Lambda keeps at "
        f"least {LAMBDA_MIN_UNRESERVED} (account limit {limit['ConcurrentExecutions']}): lower "
        "lambda_reserved_concurrency, leave it unset, or request a higher 'Concurrent "
        "executions' quota (service code lambda, quota L-B99A9384)",
    )


# --- Hugging Face Hub --------------------------------------------------------------------------


class HubClient(Protocol):
    """The two Hub reads the checks need; `HfHub` is the real one, tests point it at a fake Hub."""

    def model_info(self, repo_id: str, *, revision: str, token: str | None) -> Any: ...

    def config_json(self, repo_id: str, *, revision: str, token: str | None) -> dict[str, Any]: ...


class HfHub:
    def __init__(self, endpoint: str | None = None) -> None:
        from huggingface_hub import HfApi

        self._api = HfApi(endpoint=endpoint)

    def model_info(self, repo_id: str, *, revision: str, token: str | None) -> Any:
        # token=False: test exactly the access the endpoint will have, not a locally saved login.
        return self._api.model_info(
            repo_id,
            revision=revision,
            files_metadata=True,
            token=token or False,
            timeout=HUB_TIMEOUT_S,
        )

    def config_json(self, repo_id: str, *, revision: str, token: str | None) -> dict[str, Any]:
        # A file read (not model_info) is what a gated repo refuses without accepted terms,
        # which is exactly what TGI will hit when it downloads the weights.
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        url = hf_hub_url(repo_id, "config.json", revision=revision, endpoint=self._api.endpoint)
        response = get_session().get(
            url,
            headers=build_hf_headers(token=token or False),
            follow_redirects=True,
            timeout=HUB_TIMEOUT_S,
        )
        hf_raise_for_status(response)
        data = response.json()
        if not isinstance(data, dict):
            raise ValueError("config.json is not a JSON object")
        return data


@dataclass(frozen=True)
class HfToken:
    value: str | None
    source: str


def parse_secret_token(secret_string: str) -> str:
    """The secret must hold the bare token: the stack passes the whole value to the container as HF_TOKEN,
    so a JSON secret that would pass a lenient check here would break the endpoint."""
    text = secret_string.strip()
    if text.startswith("{"):
        raise ValueError(
            "the secret holds JSON, but the container receives the whole value as HF_TOKEN: "
            "store the bare token string"
        )
    if not text:
        raise ValueError("the secret is empty")
    return text


def resolve_hf_token(
    config: ModelConfig, env: Mapping[str, str], secrets_client: Any | None
) -> tuple[HfToken, CheckResult]:
    if env.get("HF_TOKEN"):
        return HfToken(env["HF_TOKEN"], "HF_TOKEN"), CheckResult(
            "PASS", "hf-token", "using HF_TOKEN from the environment for the Hub checks"
        )
    name = config.hf_token_secret_name
    if name is None:
        return HfToken(None, "anonymous"), CheckResult(
            "SKIP",
            "hf-token",
            "no hf_token_secret_name in the config: the endpoint reads the Hub anonymously",
        )
    if secrets_client is None:
        return HfToken(None, "anonymous"), CheckResult(
            "FAIL",
            "hf-token",
            f"cannot read secret '{name}' without AWS credentials; or set HF_TOKEN for the check",
        )
    try:
        secret = secrets_client.get_secret_value(SecretId=name)
        token = parse_secret_token(secret["SecretString"])
    except (ClientError, BotoCoreError, KeyError, ValueError) as exc:
        how = (
            f"create it with `aws secretsmanager create-secret --name {name} --secret-string <hf token>`"
            " (README, 'Gated models')"
        )
        return HfToken(None, "anonymous"), CheckResult(
            "FAIL", "hf-token", f"cannot read the HF token from secret '{name}': {exc}; {how}"
        )
    return HfToken(token, f"secret {name}"), CheckResult(
        "PASS", "hf-token", f"token read from Secrets Manager secret '{name}'"
    )


@dataclass(frozen=True)
class MemoryEstimate:
    weights_gib: float
    kv_gib: float
    overhead_gib: float
    available_gib: float
    kv_tokens: int
    kv_bytes_per_token: int
    params: int
    dtype: str

    @property
    def needed_gib(self) -> float:
        return self.weights_gib + self.kv_gib + self.overhead_gib

    @property
    def fits(self) -> bool:
        return self.needed_gib <= self.available_gib

    @property
    def spare_tokens(self) -> int:
        """Extra KV-cache tokens the spare memory holds (TGI grows its batch into it)."""
        spare = (self.available_gib - self.needed_gib) * GIB
        return max(0, int(spare // self.kv_bytes_per_token))


def _weights(config: ModelConfig, info: Any) -> tuple[int, float, str]:
    """(parameter count, weight bytes, dtype label) from the Hub's safetensors metadata."""
    safetensors = getattr(info, "safetensors", None)
    quantize = config.tgi.quantize if config.tgi is not None else None
    if safetensors is not None and safetensors.parameters:
        params = int(safetensors.total)
        if quantize in LOAD_TIME_QUANT_BYTES:
            per_param = LOAD_TIME_QUANT_BYTES[quantize]
            return params, params * per_param, f"{quantize} (quantized at load)"
        weight_bytes = sum(
            n * SAFETENSORS_DTYPE_BYTES.get(d, 2) for d, n in safetensors.parameters.items()
        )
        return params, weight_bytes, "+".join(sorted(safetensors.parameters))
    files = [
        s for s in (getattr(info, "siblings", None) or []) if s.rfilename.endswith(".safetensors")
    ]
    if files and all(s.size for s in files):
        total = sum(int(s.size) for s in files)
        return 0, float(total), "safetensors files"
    raise ValueError(
        "the Hub reports no safetensors metadata for this revision (the engine needs safetensors "
        "weights)"
    )


def _text_config(model_config: Mapping[str, Any]) -> Mapping[str, Any]:
    # Multimodal configs nest the language model's settings.
    nested = model_config.get("text_config")
    return nested if isinstance(nested, Mapping) else model_config


def kv_bytes_per_token(model_config: Mapping[str, Any]) -> int:
    cfg = _text_config(model_config)
    layers = int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    # K and V, per layer, per KV head.
    return 2 * layers * kv_heads * head_dim * CONFIG_DTYPE_BYTES.get(dtype, 2)


def estimate_memory(
    config: ModelConfig, info: Any, model_config: Mapping[str, Any]
) -> MemoryEstimate:
    params, weight_bytes, dtype = _weights(config, info)
    per_token = kv_bytes_per_token(model_config)
    if config.tgi is not None:
        # Without MAX_BATCH_TOTAL_TOKENS TGI sizes the cache from free memory; it needs at least
        # one full-length request and one full prefill batch.
        tokens = config.tgi.max_batch_total_tokens or max(
            config.tgi.max_total_tokens, config.tgi.prefill_tokens
        )
        prefill = config.tgi.prefill_tokens
        available = float(config.gpu_memory_gib)
    else:
        # vLLM takes gpu_memory_utilization of each GPU and turns what weights and activations
        # leave into KV cache, which must hold one max_model_len sequence for it to start (vLLM
        # docs "Optimization and Tuning": it pre-allocates the cache from that share). A full
        # unchunked prefill of max_model_len bounds its activations from above.
        assert config.vllm is not None
        tokens = prefill = config.vllm.max_model_len
        available = config.gpu_memory_gib * config.vllm.gpu_memory_utilization
    cfg = _text_config(model_config)
    intermediate = int(cfg.get("intermediate_size") or 4 * int(cfg.get("hidden_size", 0)))
    activations = prefill * intermediate * PREFILL_ACTIVATIONS_PER_TOKEN * 2
    return MemoryEstimate(
        weights_gib=weight_bytes / GIB,
        kv_gib=tokens * per_token / GIB,
        overhead_gib=CUDA_OVERHEAD_GIB_PER_GPU * config.gpus + activations / GIB,
        available_gib=available,
        kv_tokens=tokens,
        kv_bytes_per_token=per_token,
        params=params,
        dtype=dtype,
    )


def memory_result(config: ModelConfig, est: MemoryEstimate) -> CheckResult:
    gpus = f"{config.gpus}x {config.instance.gpu_model} {config.instance.gpu_memory_gib_each} GiB"
    params = f"{est.params / 1e9:.2f}B params, {est.dtype}" if est.params else est.dtype
    numbers = (
        f"weights {est.weights_gib:.1f} GiB ({params}) + KV cache {est.kv_gib:.1f} GiB "
        f"({est.kv_tokens} tokens x {est.kv_bytes_per_token // 1024} KiB) + overhead {est.overhead_gib:.1f} GiB "
        f"= {est.needed_gib:.1f} GiB of {est.available_gib:.0f} GiB available ({gpus} on {config.instance_type})"
    )
    if config.vllm is not None:
        numbers += f", the {config.vllm.gpu_memory_utilization:g} gpu_memory_utilization share"
    if est.fits:
        full = est.spare_tokens // config.max_total_tokens
        return CheckResult(
            "PASS",
            "gpu-memory",
            f"{numbers}; spare room for ~{est.spare_tokens} more tokens (~{full} full requests)",
        )
    fix = (
        "set tgi.quantize, or lower the TGI token limits"
        if config.vllm is None
        else "raise vllm.gpu_memory_utilization, or lower vllm.max_model_len (vLLM refuses to "
        "start when its KV cache cannot hold one max_model_len sequence)"
    )
    return CheckResult("FAIL", "gpu-memory", f"{numbers}: choose a larger instance, {fix}")


def limits_check(config: ModelConfig) -> str:
    return f"{config.engine}-limits"


def limits_result(config: ModelConfig, model_config: Mapping[str, Any]) -> CheckResult:
    check = limits_check(config)
    cfg = _text_config(model_config)
    max_pos = cfg.get("max_position_embeddings")
    if not isinstance(max_pos, int):
        return CheckResult(
            "SKIP", check, "config.json has no max_position_embeddings to compare with"
        )
    total = config.max_total_tokens
    field = "tgi.max_total_tokens" if config.engine == "tgi" else "vllm.max_model_len"
    if total > max_pos:
        return CheckResult(
            "FAIL",
            check,
            f"{field} {total} exceeds the model's max_position_embeddings {max_pos}: "
            f"{config.engine} refuses to start; lower it (and max_input_tokens) to at most {max_pos}",
        )
    return CheckResult(
        "PASS",
        check,
        f"max_input_tokens {config.max_input_tokens} < {field} {total} <= "
        f"max_position_embeddings {max_pos}",
    )


def check_hub(config: ModelConfig, hub: HubClient, token: HfToken) -> list[CheckResult]:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, rev = config.hf_model_id, config.hf_revision
    page = f"https://huggingface.co/{repo}"
    skipped = [
        CheckResult("SKIP", name, "the model could not be read from the Hub")
        for name in ("hub-revision", "gpu-memory", limits_check(config))
    ]
    try:
        info = hub.model_info(repo, revision=rev, token=token.value)
        model_config = hub.config_json(repo, revision=rev, token=token.value)
    except GatedRepoError:
        why = (
            f"{repo} is gated and the token ({token.source}) has no access: accept the licence at {page} "
            "with the token's account, or put that account's token in the secret"
            if token.value
            else f"{repo} is gated: set hf_token_secret_name in the config (or HF_TOKEN for the check) "
            f"to a token of an account that accepted the licence at {page}"
        )
        return [CheckResult("FAIL", "hub-model", why), *skipped]
    except RevisionNotFoundError:
        return [
            CheckResult(
                "FAIL",
                "hub-model",
                f"{repo} has no revision '{rev}': fix hf_revision (see {page}/commits)",
            ),
            *skipped,
        ]
    except RepositoryNotFoundError:
        return [
            CheckResult(
                "FAIL",
                "hub-model",
                f"{repo} not found on the Hub, or private and the token ({token.source}) cannot see it: "
                "check hf_model_id",
            ),
            *skipped,
        ]
    except (HfHubHTTPError, OSError, ValueError) as exc:
        return [
            CheckResult("FAIL", "hub-model", f"cannot read {repo}@{rev} from the Hub: {exc}"),
            *skipped,
        ]
    except Exception as exc:  # the Hub client's transport errors (httpx) are not OSError
        return [
            CheckResult(
                "FAIL",
                "hub-model",
                f"cannot reach the Hugging Face Hub ({type(exc).__name__}: {exc}): check the "
                "network or HF_ENDPOINT",
            ),
            *skipped,
        ]

    gated = f", gated ({info.gated}) and readable with {token.source}" if info.gated else ""
    results = [
        CheckResult("PASS", "hub-model", f"{repo}@{rev} is on the Hub (commit {info.sha}){gated}")
    ]
    if config.revision_pinned:
        results.append(CheckResult("PASS", "hub-revision", f"pinned to commit {rev}"))
    else:
        results.append(
            CheckResult(
                "PASS",
                "hub-revision",
                f"note: '{rev}' is a branch (now {info.sha}); a redeploy may serve different weights: "
                f"run `make pin MODEL={config.name}`",
            )
        )
    try:
        results.append(memory_result(config, estimate_memory(config, info, model_config)))
    except (KeyError, TypeError, ValueError) as exc:
        results.append(
            CheckResult("FAIL", "gpu-memory", f"cannot size the model from the Hub metadata: {exc}")
        )
    results.append(limits_result(config, model_config))
    return results


# --- Qdrant ------------------------------------------------------------------------------------


def check_qdrant(client: Any, url: str) -> CheckResult:
    from qdrant_client.http.models import Distance, VectorParams

    url = redact_url(url)  # only shown from here on

    problems: list[str] = []
    try:
        existing = {c.name for c in client.get_collections().collections}
        for name in COLLECTIONS:
            if name not in existing:
                problems.append(f"{name} missing")
                continue
            vectors = client.get_collection(name).config.params.vectors
            if not isinstance(vectors, VectorParams):
                problems.append(
                    f"{name} has named vectors {sorted(vectors or {})}, expected one unnamed vector"
                )
            elif vectors.size != EMBEDDING_DIM:
                problems.append(f"{name} vectors are {vectors.size}-d, expected {EMBEDDING_DIM}-d")
            elif vectors.distance != Distance.COSINE:
                problems.append(f"{name} uses {vectors.distance} distance, expected Cosine")
    except Exception as exc:
        return CheckResult("FAIL", "qdrant", f"cannot read collections from {url}: {exc}")
    if problems:
        return CheckResult(
            "FAIL",
            "qdrant",
            f"{url}: {'; '.join(problems)} (run the feature pipeline or `make ingest` to create them)",
        )
    return CheckResult(
        "PASS",
        "qdrant",
        f"{url}: {', '.join(COLLECTIONS)} exist with {EMBEDDING_DIM}-d cosine vectors",
    )


# --- Orchestration -----------------------------------------------------------------------------


@dataclass
class Clients:
    """Everything the checks talk to; None means "build the real one"."""

    session: boto3.Session | None = None
    quotas: Any | None = None
    secrets: Any | None = None
    hub: HubClient | None = None
    apigateway: Any | None = None
    iam: Any | None = None
    lambda_: Any | None = None
    qdrant_factory: Callable[[str, str | None], Any] | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def _qdrant_client(url: str, api_key: str | None) -> Any:
    from qdrant_client import QdrantClient

    return QdrantClient(url=url, api_key=api_key, timeout=QDRANT_TIMEOUT_S)


def _qdrant_api_key(
    deployment: DeploymentConfig, env: Mapping[str, str], secrets: Any | None
) -> str | None:
    if env.get("QDRANT_API_KEY"):
        return env["QDRANT_API_KEY"]
    if deployment.qdrant_api_key_secret_name and secrets is not None:
        secret = secrets.get_secret_value(SecretId=deployment.qdrant_api_key_secret_name)
        return str(secret["SecretString"]).strip()
    return None


def run_checks(
    config: ModelConfig, deployment: DeploymentConfig, clients: Clients
) -> list[CheckResult]:
    session = clients.session or boto3.Session()
    aws = check_aws(session)
    results = [aws]
    aws_ok = aws.status == "PASS"
    region = session.region_name or "?"

    if aws_ok:
        quotas = clients.quotas or session.client("service-quotas")
        results.append(check_quota(config, quotas, region))
        account = session.client("sts").get_caller_identity()["Account"]
        results.append(
            check_api_gateway_role(
                clients.apigateway or session.client("apigateway"),
                clients.iam or session.client("iam"),
                account=account,
                region=region,
                stack_creates_it=deployment.api_gateway_account_role,
            )
        )
        results.append(
            check_lambda_concurrency(
                clients.lambda_ or session.client("lambda"),
                function_name=deployment.business_function_name,
                reserve=deployment.lambda_reserved_concurrency,
            )
        )
    else:
        for check in ("service-quota", "api-gateway-logging-role", "lambda-concurrency"):
            results.append(CheckResult("SKIP", check, "needs AWS credentials and a region"))

    secrets = clients.secrets or (session.client("secretsmanager") if aws_ok else None)
    token, token_result = resolve_hf_token(config, clients.env, secrets)
    results.append(token_result)
    results.extend(check_hub(config, clients.hub or HfHub(clients.env.get("HF_ENDPOINT")), token))

    url = clients.env.get("QDRANT_URL") or deployment.qdrant_url
    if not url:
        results.append(
            CheckResult("SKIP", "qdrant", "no qdrant_url in the cdk context and no QDRANT_URL set")
        )
    else:
        try:
            api_key = _qdrant_api_key(deployment, clients.env, secrets)
        except (ClientError, BotoCoreError, KeyError) as exc:
            results.append(
                CheckResult("FAIL", "qdrant", f"cannot read the Qdrant API key secret: {exc}")
            )
        else:
            factory = clients.qdrant_factory or _qdrant_client
            results.append(check_qdrant(factory(url, api_key), url))
    return results


def load_cdk_context(path: Path = REPO_ROOT / "cdk.json") -> dict[str, Any]:
    if not path.is_file():
        return {}
    context = json.loads(path.read_text(encoding="utf-8")).get("context", {})
    return dict(context) if isinstance(context, dict) else {}


def load_configs(
    model: str | None, context: Mapping[str, Any] | None = None
) -> tuple[ModelConfig, DeploymentConfig]:
    deployment = load_deployment_config(load_cdk_context() if context is None else context)
    return load_model_config(model or deployment.model), deployment


def report(results: Sequence[CheckResult], out: Any = sys.stdout) -> int:
    for result in results:
        print(result.line(), file=out)
    failed = [r.check for r in results if r.status == "FAIL"]
    print(
        f"preflight: {'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}", file=out
    )
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None, clients: Clients | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.preflight", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model", help="model_config/<name>.yaml to check (default: the cdk.json context)"
    )
    args = parser.parse_args(argv)
    try:
        config, deployment = load_configs(args.model)
    except ConfigError as exc:
        print(f"FAIL config: {exc}")
        return 1
    return report(run_checks(config, deployment, clients or Clients()))


if __name__ == "__main__":
    sys.exit(main())
