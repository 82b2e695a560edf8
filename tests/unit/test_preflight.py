"""`tools.preflight`: every check, pass and fail, against moto and fakes that speak the real protocols.

- STS, Secrets Manager: moto.
- Service Quotas: moto 5.2 implements only VPC defaults, not ListServiceQuotas for sagemaker, so
  `FakeServiceQuotas` answers a real boto3 client in the API's response shape (validated against
  botocore's service model).
- Hub: `FakeHub`, a local HTTP server speaking the Hub's REST protocol to the real huggingface_hub
  client, with the real parameter counts and config.json values of the shipped models.
- Qdrant: qdrant-client's embedded local mode (`:memory:`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import boto3
import pytest
from moto import mock_aws
from qdrant_client import QdrantClient
from qdrant_client.http.models import Distance, VectorParams

from devkit.fakes.fake_aws_apis import FakeQuota, FakeServiceQuotas
from devkit.fakes.fake_hub import GRANTED_TOKEN, UNGRANTED_TOKEN, FakeHub, serve
from rag.domain.ports import COLLECTIONS
from stacks.config import DeploymentConfig, ModelConfig, load_model_config
from tools import preflight
from tools.preflight import (
    CheckResult,
    Clients,
    HfHub,
    HfToken,
    check_aws,
    check_hub,
    check_qdrant,
    check_quota,
    report,
    run_checks,
)

REGION = "us-east-1"
G5_2XL = FakeQuota("ml.g5.2xlarge for endpoint usage", "L-FAKEG52X", 1, applied=True)
G5_12XL = FakeQuota("ml.g5.12xlarge for endpoint usage", "L-FAKEG512", 0)
OTHERS = [
    FakeQuota(f"ml.m5.{size} for endpoint usage", f"L-FAKEM5{i}", 4)
    for i, size in enumerate(["large", "xlarge"])
]


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.Session]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield boto3.Session(region_name=REGION)


@pytest.fixture(scope="module")
def fake_hub() -> Iterator[tuple[FakeHub, HfHub]]:
    hub = FakeHub()
    with serve(hub) as url:
        yield hub, HfHub(url)


def quotas(session: boto3.Session, *entries: FakeQuota) -> Any:
    return FakeServiceQuotas([*OTHERS, *entries]).attach(session.client("service-quotas"))


def variant(name: str, **changes: Any) -> ModelConfig:
    data = load_model_config(name).model_dump(exclude_none=True)
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return ModelConfig.model_validate(data)


def by_check(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.check: r for r in results}


def qdrant_with(sizes: dict[str, int]) -> QdrantClient:
    client = QdrantClient(":memory:")
    for name, size in sizes.items():
        client.create_collection(
            name, vectors_config=VectorParams(size=size, distance=Distance.COSINE)
        )
    return client


# --- AWS ---------------------------------------------------------------------------------------


def test_missing_credentials_fail_with_how_to_set_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given no credentials anywhere boto3 looks (env, files, instance metadata)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    # When checking; Then it fails and says how to fix it
    result = check_aws(boto3.Session(region_name=REGION))
    assert result.status == "FAIL"
    assert (
        "aws configure" in result.why
        and "AWS_PROFILE" in result.why
        and "AWS_DEFAULT_REGION" in result.why
    )


def test_missing_region_fails(
    aws: boto3.Session, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    result = check_aws(boto3.Session())
    assert result.status == "FAIL" and "no AWS region" in result.why


def test_valid_credentials_pass_with_the_account(aws: boto3.Session) -> None:
    result = check_aws(aws)
    assert result.status == "PASS"
    assert "account 123456789012" in result.why and REGION in result.why


def test_quota_covering_max_scale_passes(aws: boto3.Session) -> None:
    # Given an applied quota of 1 ml.g5.2xlarge and the default config (max 1 copy)
    result = check_quota(load_model_config("twin-llama-3.1-8b"), quotas(aws, G5_2XL), REGION)
    assert result == CheckResult(
        "PASS",
        "service-quota",
        "'ml.g5.2xlarge for endpoint usage' is 1 in us-east-1; needs 1 (1 copies at max scale, 1 per instance)",
    )


def test_quota_below_max_scale_fails_with_console_url_and_cli(aws: boto3.Session) -> None:
    # Given the Qwen config (2 copies at max, one per 4-GPU instance) and the default quota of 0,
    # which AWS lists only among the default quotas
    fake = FakeServiceQuotas([*OTHERS, G5_12XL])
    client = fake.attach(aws.client("service-quotas"))

    # When checking
    result = check_quota(load_model_config("qwen2.5-32b-instruct"), client, REGION)

    # Then it fails with the exact console page and CLI command for the needed value
    assert result.status == "FAIL"
    assert "'ml.g5.12xlarge for endpoint usage' is 0 in us-east-1; needs 2" in result.why
    assert (
        "https://us-east-1.console.aws.amazon.com/servicequotas/home/services/sagemaker/quotas/L-FAKEG512"
        in result.why
    )
    assert (
        "aws service-quotas request-service-quota-increase --service-code sagemaker --quota-code L-FAKEG512 "
        "--desired-value 2 --region us-east-1" in result.why
    )
    # and it paged through the applied quotas before falling back to the defaults
    assert [op for op, _ in fake.requests] == [
        "ListServiceQuotas",
        "ListAWSDefaultServiceQuotas",
        "ListAWSDefaultServiceQuotas",
    ]


def test_unknown_quota_name_fails(aws: boto3.Session) -> None:
    result = check_quota(load_model_config("twin-llama-3.1-8b"), quotas(aws), REGION)
    assert (
        result.status == "FAIL"
        and "no quota named 'ml.g5.2xlarge for endpoint usage'" in result.why
    )


# --- Hub ---------------------------------------------------------------------------------------


def test_default_model_fits_and_branch_revision_is_flagged(fake_hub: tuple[FakeHub, HfHub]) -> None:
    # Given TwinLlama 8B (8.03B BF16 params) on one 24 GiB A10G with 4096 batch tokens
    results = by_check(
        check_hub(load_model_config("twin-llama-3.1-8b"), fake_hub[1], HfToken(None, "anonymous"))
    )

    # Then the model is found, the branch is flagged, and the memory numbers are printed
    assert results["hub-model"].status == "PASS"
    assert results["hub-revision"].status == "PASS"
    assert "'main' is a branch" in results["hub-revision"].why
    assert "make pin MODEL=twin-llama-3.1-8b" in results["hub-revision"].why
    memory = results["gpu-memory"]
    assert memory.status == "PASS"
    assert "weights 15.0 GiB (8.03B params, BF16)" in memory.why
    assert "KV cache 0.5 GiB (4096 tokens x 128 KiB)" in memory.why
    assert "of 24 GiB available (1x NVIDIA A10G 24 GiB on ml.g5.2xlarge)" in memory.why
    assert results["tgi-limits"].status == "PASS"
    assert "max_position_embeddings 131072" in results["tgi-limits"].why


def test_pinned_revision_passes_without_note(fake_hub: tuple[FakeHub, HfHub]) -> None:
    sha = fake_hub[0].repos["mlabonne/TwinLlama-3.1-8B-DPO"].branches["main"]
    results = by_check(
        check_hub(variant("twin-llama-3.1-8b", hf_revision=sha), fake_hub[1], HfToken(None, "x"))
    )
    assert results["hub-revision"].why == f"pinned to commit {sha}"


def test_multi_gpu_model_fits_four_a10g(fake_hub: tuple[FakeHub, HfHub]) -> None:
    # Qwen2.5-32B: 32.76B BF16 params = 61 GiB, 64 layers x 8 KV heads x 128 dims -> 256 KiB/token
    results = by_check(
        check_hub(load_model_config("qwen2.5-32b-instruct"), fake_hub[1], HfToken(None, "x"))
    )
    memory = results["gpu-memory"]
    assert memory.status == "PASS", memory.why
    assert "weights 61.0 GiB (32.76B params, BF16)" in memory.why
    assert "KV cache 2.0 GiB (8192 tokens x 256 KiB)" in memory.why
    assert "of 96 GiB available (4x NVIDIA A10G 24 GiB" in memory.why


def test_too_big_model_fails_with_the_numbers(fake_hub: tuple[FakeHub, HfHub]) -> None:
    # Given Llama-3.1-70B (70.55B params) on a single 24 GiB A10G
    config = variant("llama-3.1-8b-instruct", hf_model_id="meta-llama/Llama-3.1-70B-Instruct")
    results = by_check(check_hub(config, fake_hub[1], HfToken(GRANTED_TOKEN, "HF_TOKEN")))

    memory = results["gpu-memory"]
    assert memory.status == "FAIL"
    assert "weights 131.4 GiB (70.55B params, BF16)" in memory.why
    assert "choose a larger instance" in memory.why


def test_load_time_quantization_shrinks_the_weights(fake_hub: tuple[FakeHub, HfHub]) -> None:
    config = variant("twin-llama-3.1-8b", tgi={"quantize": "bitsandbytes-nf4"})
    memory = by_check(check_hub(config, fake_hub[1], HfToken(None, "x")))["gpu-memory"]
    assert "weights 3.7 GiB (8.03B params, bitsandbytes-nf4 (quantized at load))" in memory.why


def test_total_tokens_beyond_max_position_embeddings_fail(fake_hub: tuple[FakeHub, HfHub]) -> None:
    # Given Qwen2.5-32B (max_position_embeddings 32768) asked for 40000 total tokens
    config = variant(
        "qwen2.5-32b-instruct",
        tgi={
            "max_input_tokens": 36000,
            "max_total_tokens": 40000,
            "max_batch_prefill_tokens": 36000,
        },
    )
    limits = by_check(check_hub(config, fake_hub[1], HfToken(None, "x")))["tgi-limits"]
    assert limits.status == "FAIL"
    assert "max_total_tokens 40000 exceeds the model's max_position_embeddings 32768" in limits.why


def test_vllm_model_fits_within_its_gpu_memory_utilization_share(
    fake_hub: tuple[FakeHub, HfHub],
) -> None:
    """vLLM takes gpu_memory_utilization of each GPU and pre-allocates its KV cache from what the
    weights leave (https://docs.vllm.ai/en/stable/configuration/optimization/ "Preemption":
    "vLLM pre-allocates GPU cache using this percentage of memory")."""
    # Given TwinLlama 8B on vLLM, 0.9 of one 24 GiB A10G, max_model_len 4096
    config = load_model_config("twin-llama-3.1-8b-vllm")
    results = by_check(check_hub(config, fake_hub[1], HfToken(None, "x")))

    # Then the budget is 21.6 GiB, and the one max_model_len sequence it must hold fits in it
    memory = results["gpu-memory"]
    assert memory.status == "PASS", memory.why
    assert "weights 15.0 GiB (8.03B params, BF16)" in memory.why
    assert "KV cache 0.5 GiB (4096 tokens x 128 KiB)" in memory.why
    assert "= 17.3 GiB of 22 GiB available" in memory.why  # 21.6 rounded
    assert "the 0.9 gpu_memory_utilization share" in memory.why
    # And what is left becomes KV cache: ~35k tokens, ~8 full-length requests at once
    assert "spare room for ~3" in memory.why and "(~8 full requests)" in memory.why
    assert results["vllm-limits"].status == "PASS"
    assert "vllm.max_model_len 4096 <= max_position_embeddings 131072" in results["vllm-limits"].why


def test_vllm_with_too_small_a_memory_share_fails_saying_what_to_raise(
    fake_hub: tuple[FakeHub, HfHub],
) -> None:
    # Given only 0.7 of the A10G (16.8 GiB) for 15 GiB of weights and a 4096-token sequence
    config = variant("twin-llama-3.1-8b-vllm", vllm={"gpu_memory_utilization": 0.7})
    memory = by_check(check_hub(config, fake_hub[1], HfToken(None, "x")))["gpu-memory"]
    assert memory.status == "FAIL"
    assert "raise vllm.gpu_memory_utilization" in memory.why


def test_vllm_max_model_len_beyond_max_position_embeddings_fails(
    fake_hub: tuple[FakeHub, HfHub],
) -> None:
    config = variant(
        "twin-llama-3.1-8b-vllm", vllm={"max_model_len": 200_000, "max_input_tokens": 190_000}
    )
    limits = by_check(check_hub(config, fake_hub[1], HfToken(None, "x")))["vllm-limits"]
    assert limits.status == "FAIL"
    assert "vllm.max_model_len 200000 exceeds the model's max_position_embeddings 131072" in (
        limits.why
    )


def test_gated_model_without_token_fails_with_what_to_do(fake_hub: tuple[FakeHub, HfHub]) -> None:
    results = check_hub(
        load_model_config("llama-3.1-8b-instruct"), fake_hub[1], HfToken(None, "anonymous")
    )
    assert results[0].status == "FAIL"
    assert "meta-llama/Llama-3.1-8B-Instruct is gated" in results[0].why
    assert "https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct" in results[0].why
    assert [r.status for r in results[1:]] == ["SKIP", "SKIP", "SKIP"]


def test_gated_model_with_a_token_lacking_access_fails(fake_hub: tuple[FakeHub, HfHub]) -> None:
    token = HfToken(UNGRANTED_TOKEN, "secret llm-twin/hf-token")
    (first, *_) = check_hub(load_model_config("llama-3.1-8b-instruct"), fake_hub[1], token)
    assert first.status == "FAIL"
    assert "token (secret llm-twin/hf-token) has no access: accept the licence" in first.why


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hf_model_id": "nobody/no-such-model"}, "nobody/no-such-model not found on the Hub"),
        ({"hf_revision": "v9"}, "has no revision 'v9'"),
    ],
)
def test_missing_repo_or_revision_fails(
    fake_hub: tuple[FakeHub, HfHub], changes: dict[str, str], message: str
) -> None:
    (first, *_) = check_hub(
        variant("twin-llama-3.1-8b", **changes), fake_hub[1], HfToken(None, "x")
    )
    assert first.status == "FAIL" and message in first.why


def test_token_comes_from_the_secret_and_reaches_the_hub(
    aws: boto3.Session, fake_hub: tuple[FakeHub, HfHub]
) -> None:
    # Given the gated config's secret holding a token with access (JSON form)
    secrets = aws.client("secretsmanager")
    secrets.create_secret(Name="llm-twin/hf-token", SecretString=GRANTED_TOKEN)
    hub, client = fake_hub

    # When running the checks
    config = load_model_config("llama-3.1-8b-instruct")
    clients = Clients(session=aws, quotas=quotas(aws, G5_2XL), hub=client, env={})
    results = by_check(run_checks(config, DeploymentConfig(), clients))

    # Then the token was read from the secret and sent to the Hub, and the gated model passes
    assert results["hf-token"].why == "token read from Secrets Manager secret 'llm-twin/hf-token'"
    assert results["hub-model"].status == "PASS"
    assert "gated (manual) and readable with secret llm-twin/hf-token" in results["hub-model"].why
    assert (
        "/meta-llama/Llama-3.1-8B-Instruct/resolve/main/config.json",
        f"Bearer {GRANTED_TOKEN}",
    ) in hub.requests


def test_missing_secret_fails_with_how_to_create_it(aws: boto3.Session) -> None:
    _, result = preflight.resolve_hf_token(
        load_model_config("llama-3.1-8b-instruct"), {}, aws.client("secretsmanager")
    )
    assert result.status == "FAIL"
    assert "aws secretsmanager create-secret --name llm-twin/hf-token" in result.why


# --- Qdrant ------------------------------------------------------------------------------------


def test_qdrant_with_the_three_384d_collections_passes() -> None:
    client = qdrant_with(dict.fromkeys(COLLECTIONS, 384))
    assert check_qdrant(client, "http://q:6333").status == "PASS"


def test_qdrant_missing_or_wrong_size_collection_fails() -> None:
    client = qdrant_with({"embedded_articles": 384, "embedded_posts": 768})
    result = check_qdrant(client, "http://q:6333")
    assert result.status == "FAIL"
    assert "embedded_posts vectors are 768-d, expected 384-d" in result.why
    assert "embedded_repositories missing" in result.why


# --- The whole command -------------------------------------------------------------------------


def run_main(
    aws: boto3.Session, hub: HfHub, model: str, quota: FakeQuota, qdrant: QdrantClient | None = None
) -> tuple[int, str]:
    env = {"QDRANT_URL": "http://qdrant.internal:6333"} if qdrant else {}
    # An account already set up for API Gateway logging, with Lambda's default concurrency
    role = aws.client("iam").create_role(RoleName="apigw-logs", AssumeRolePolicyDocument="{}")
    aws.client("apigateway").update_account(
        patchOperations=[
            {"op": "replace", "path": "/cloudwatchRoleArn", "value": role["Role"]["Arn"]}
        ]
    )
    lambda_client, _ = _lambda_with(unreserved=1000, current_reservation=None)
    clients = Clients(
        session=aws,
        quotas=quotas(aws, quota),
        lambda_=lambda_client,
        hub=hub,
        qdrant_factory=(lambda url, key: qdrant) if qdrant else None,
        env=env,
    )
    out = io.StringIO()
    config, deployment = preflight.load_configs(model)
    code = report(run_checks(config, deployment, clients), out)
    return code, out.getvalue()


def test_passing_config_exits_zero(aws: boto3.Session, fake_hub: tuple[FakeHub, HfHub]) -> None:
    qdrant = qdrant_with(dict.fromkeys(COLLECTIONS, 384))
    code, text = run_main(aws, fake_hub[1], "twin-llama-3.1-8b", G5_2XL, qdrant)
    assert code == 0, text
    assert [line.split()[0] for line in text.splitlines()[:-1]] == ["PASS"] * 4 + ["SKIP"] + [
        "PASS"
    ] * 5
    assert text.splitlines()[-1] == "preflight: all checks passed"


def test_failing_config_exits_non_zero_naming_the_failures(
    aws: boto3.Session, fake_hub: tuple[FakeHub, HfHub]
) -> None:
    code, text = run_main(aws, fake_hub[1], "qwen2.5-32b-instruct", G5_12XL)
    assert code == 1
    assert "FAIL service-quota:" in text
    assert text.splitlines()[-1] == "preflight: FAILED: service-quota"


def test_main_reports_a_bad_model_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert preflight.main(["--model", "no-such-model"]) == 1
    assert "unknown model 'no-such-model'" in capsys.readouterr().out


def test_hf_token_secret_must_hold_the_bare_token() -> None:
    from tools.preflight import parse_secret_token

    assert parse_secret_token(" hf_abc \n") == "hf_abc"
    with pytest.raises(ValueError, match="store the bare token string"):
        parse_secret_token('{"HF_TOKEN": "hf_abc"}')
    with pytest.raises(ValueError, match="empty"):
        parse_secret_token("  ")


def test_an_unreachable_hub_is_a_fail_line_not_a_traceback() -> None:
    from stacks.config import load_model_config
    from tools.preflight import HfToken, check_hub

    class TransportError(Exception):
        """What the Hub client raises when DNS or TCP fails (not an OSError)."""

    class UnreachableHub:
        def model_info(self, *args: Any, **kwargs: Any) -> NoReturn:
            raise TransportError("[Errno -2] Name or service not known")

        def config_json(self, *args: Any, **kwargs: Any) -> NoReturn:
            raise AssertionError("not reached")

    results = check_hub(
        load_model_config("twin-llama-3.1-8b"), UnreachableHub(), HfToken(None, "anonymous")
    )
    assert (results[0].status, results[0].check) == ("FAIL", "hub-model")
    assert "cannot reach the Hugging Face Hub" in results[0].why
    assert {r.status for r in results[1:]} == {"SKIP"}


# --- API Gateway logging role, Lambda concurrency (issue 12) -----------------------------------


def test_no_api_gateway_logging_role_fails_with_the_one_time_fix(aws: boto3.Session) -> None:
    """Stage access and execution logging need a CloudWatch Logs role in the region's API Gateway
    account settings (API Gateway developer guide, "Set up CloudWatch logging for REST APIs");
    without it the stage fails to deploy ("CloudWatch Logs role ARN must be set in account
    settings to enable logging"). moto's GetAccount answers as a fresh account: no role."""
    result = preflight.check_api_gateway_role(
        aws.client("apigateway"),
        aws.client("iam"),
        account="123456789012",
        region=REGION,
        stack_creates_it=False,
    )
    assert result.status == "FAIL"
    assert "update-account" in result.why and "path=/cloudwatchRoleArn" in result.why
    assert "AmazonAPIGatewayPushToCloudWatchLogs" in result.why
    assert "api_gateway_account_role=true" in result.why


def test_an_existing_logging_role_passes_and_a_deleted_one_fails(aws: boto3.Session) -> None:
    iam = aws.client("iam")
    apigateway = aws.client("apigateway")
    arn = iam.create_role(RoleName="apigw-logs", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    apigateway.update_account(
        patchOperations=[{"op": "replace", "path": "/cloudwatchRoleArn", "value": arn}]
    )
    args: dict[str, Any] = {"account": "123456789012", "region": REGION, "stack_creates_it": False}
    assert preflight.check_api_gateway_role(apigateway, iam, **args).status == "PASS"
    # the state a destroyed stack that owned AWS::ApiGateway::Account leaves (aws-cdk#12769)
    iam.delete_role(RoleName="apigw-logs")
    deleted = preflight.check_api_gateway_role(apigateway, iam, **args)
    assert deleted.status == "FAIL" and "no longer exists" in deleted.why


def _lambda_with(unreserved: int, current_reservation: int | None) -> tuple[Any, Any]:
    """A real Lambda client whose answers botocore's Stubber checks against the service model
    (moto 5.2 does not implement GetAccountSettings)."""
    from botocore.stub import Stubber

    client = boto3.client("lambda", region_name=REGION)
    stub = Stubber(client)
    stub.add_response(
        "get_account_settings",
        {
            "AccountLimit": {
                "ConcurrentExecutions": 1000,
                "UnreservedConcurrentExecutions": unreserved,
            }
        },
    )
    if current_reservation is None:
        stub.add_client_error(
            "get_function_concurrency",
            service_error_code="ResourceNotFoundException",
            http_status_code=404,
        )
    else:
        stub.add_response(
            "get_function_concurrency", {"ReservedConcurrentExecutions": current_reservation}
        )
    stub.activate()
    return client, stub


def test_reserved_concurrency_that_would_leave_less_than_100_unreserved_fails() -> None:
    """Lambda keeps at least 100 concurrent executions unreserved per account and region
    (Lambda developer guide, "Configuring reserved concurrency"): new accounts often have a
    limit of 10 or 100, so any reservation fails the deploy there."""
    client, _ = _lambda_with(unreserved=100, current_reservation=None)
    result = preflight.check_lambda_concurrency(client, function_name="llm-twin-rag", reserve=5)
    assert result.status == "FAIL"
    assert "lambda_reserved_concurrency" in result.why and "100" in result.why


def test_a_redeploy_counts_the_functions_own_reservation_as_available() -> None:
    client, _ = _lambda_with(unreserved=100, current_reservation=5)
    result = preflight.check_lambda_concurrency(client, function_name="llm-twin-rag", reserve=5)
    assert result.status == "PASS"
