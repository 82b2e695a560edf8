"""End to end on a real AWS account: deploy, call every route with the API key, find the trace,
destroy — the destroy runs even when a check fails.

Opt-in: `make e2e` (sets E2E=1). Costs a GPU instance for the duration (~20-30 min with model
download and startup) plus pennies of serverless. Needs credentials, a region, the GPU quota,
a Qdrant URL holding the three collections (QDRANT_URL + its API key in the stack's secret), and
the models fetched (`make models`). Skipped when any of that is missing.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import REPO

OUTPUTS = REPO / "build" / "e2e-outputs.json"
TRACE_WAIT_S = 180
HTTP_TIMEOUT_S = 35


def _aws_ready() -> str | None:
    if os.environ.get("E2E") != "1":
        return "opt-in: run `make e2e` (E2E=1) to deploy to a real account"
    try:
        import boto3

        session = boto3.Session()
        if session.region_name is None:
            return "no AWS region configured (AWS_DEFAULT_REGION / aws configure)"
        session.client("sts").get_caller_identity()
    except Exception as exc:  # any failure means: no usable credentials
        return f"no usable AWS credentials: {type(exc).__name__}"
    if not os.environ.get("QDRANT_URL"):
        return "QDRANT_URL is not set (a Qdrant holding the three collections)"
    return None


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(_aws_ready() is not None, reason=str(_aws_ready())),
]


def _make(*args: str) -> None:
    subprocess.run(["make", *args], cwd=REPO, check=True, timeout=3600)


@pytest.fixture(scope="module")
def deployed() -> Iterator[dict[str, str]]:
    try:
        subprocess.run(
            [
                "node_modules/.bin/cdk",
                "deploy",
                "--all",
                "--require-approval",
                "never",
                "-c",
                f"qdrant_url={os.environ['QDRANT_URL']}",
                "--outputs-file",
                str(OUTPUTS),
            ],
            cwd=REPO,
            check=True,
            timeout=3600,
        )
        outputs = json.loads(OUTPUTS.read_text())
        yield next(v for v in outputs.values() if "ApiUrl" in v)
    finally:
        _make("destroy")


def _call(
    api: dict[str, str], method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    key = subprocess.run(
        shlex.split(api["ApiKeyCommand"]), capture_output=True, text=True, check=True
    ).stdout.strip()
    request = urllib.request.Request(  # noqa: S310 - https URL from our own stack output
        api["ApiUrl"].rstrip("/") + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"content-type": "application/json", "x-api-key": key},
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_retrieve_rag_and_the_trace(deployed: dict[str, str]) -> None:
    status, body = _call(deployed, "GET", "/health")
    assert status == 200, body

    status, body = _call(
        deployed, "POST", "/retrieve", {"query": "vector databases", "expand": False}
    )
    assert status == 200, body
    assert body["chunks"], "the configured Qdrant returned nothing"

    status, body = _call(
        deployed, "POST", "/rag", {"query": "What do you think about RAG evaluation?"}
    )
    assert status == 200, body
    assert body["answer"].strip()
    assert body["sources"]
    trace_id = body["trace_id"]

    import boto3

    logs = boto3.client("logs")
    group = f"/aws/lambda/{deployed['FunctionName'].removesuffix('-rag')}-trace-forwarder"
    deadline = time.monotonic() + TRACE_WAIT_S
    while time.monotonic() < deadline:
        found = logs.filter_log_events(logGroupName=group, filterPattern=f'"{trace_id}"')["events"]
        if any("trace delivered" in e["message"] for e in found):
            return
        time.sleep(10)
    pytest.fail(f"trace {trace_id} was not delivered to Opik within {TRACE_WAIT_S} s")


def test_unknown_route_and_bad_body_use_the_error_contract(deployed: dict[str, str]) -> None:
    status, body = _call(deployed, "POST", "/rag", {"query": ""})
    assert status == 400
    assert set(body["error"]) == {"code", "message"}
    status, body = _call(deployed, "GET", "/nope")
    assert status == 404
    assert body["error"]["code"] == "not_found"


def test_openai_client_with_only_base_url_and_key(deployed: dict[str, str]) -> None:
    """The OpenAI SDK sends the key as `Authorization: Bearer`; the key authorizer hands it to
    the usage plan (https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-api-key-source.html),
    and `<ApiUrl>chat/completions` is stage `v1` + resource `/chat/completions`."""
    import openai
    from openai.types.chat import ChatCompletionMessageParam

    key = subprocess.run(
        shlex.split(deployed["ApiKeyCommand"]), capture_output=True, text=True, check=True
    ).stdout.strip()
    client = openai.OpenAI(base_url=deployed["ApiUrl"], api_key=key, timeout=HTTP_TIMEOUT_S)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What do you think about RAG evaluation?"}
    ]
    completion = client.chat.completions.create(model="llm-twin", messages=messages)
    assert (completion.choices[0].message.content or "").strip()
    assert (completion.model_extra or {})["sources"]
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="llm-twin", messages=messages, stream=True)
        if c.choices
    )
    assert streamed.strip()
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=deployed["ApiUrl"], api_key="wrong", max_retries=0).models.list()
