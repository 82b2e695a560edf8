"""SageMakerLLM against botocore's Stubber: real request and response shapes checked by botocore's
sagemaker-runtime model, request bodies checked against TGI's OpenAPI spec, every error mapped."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from devkit.fakes.tgi_server import tgi_spec
from rag.adapters.llm.build import build_llm
from rag.adapters.llm.http import HttpLLM
from rag.adapters.llm.sagemaker import SageMakerLLM, botocore_config
from rag.domain.budget import worst_case_call_s
from rag.domain.errors import (
    ApiError,
    BadRequest,
    ModelError,
    ModelUnavailable,
    Throttled,
    UpstreamTimeout,
)
from rag.domain.ports import GenerationParams

ENDPOINT = "twin-llm"
COMPONENT = "twin-llm-ic"
PARAMS = GenerationParams(max_new_tokens=64, temperature=0.7, top_p=0.9, stop=("### Instruction",))
AUTHOR_SCHEMA = {
    "type": "object",
    "properties": {"author": {"type": ["string", "null"]}},
    "required": ["author"],
}
TGI_422 = json.dumps(
    {
        "error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 1512. "
        "Given: 30 `inputs` tokens and 4060 `max_new_tokens`",
        "error_type": "validation",
    }
)


def _client() -> Any:
    return boto3.client(
        "sagemaker-runtime",
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=botocore_config(connect_timeout_s=2, read_timeout_s=20),
    )


class Recorder:
    """Keeps the parameters of each invoke_endpoint call (botocore's provide-client-params)."""

    def __init__(self, client: Any) -> None:
        self.calls: list[dict[str, Any]] = []
        client.meta.events.register(
            "provide-client-params.sagemaker-runtime.InvokeEndpoint", self._record
        )

    def _record(self, params: dict[str, Any], **_: Any) -> None:
        self.calls.append(dict(params))

    def body(self, index: int = -1) -> Any:
        return json.loads(self.calls[index]["Body"])


@pytest.fixture
def client() -> Any:
    return _client()


@pytest.fixture
def stub(client: Any) -> Iterator[Stubber]:
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def llm(client: Any) -> SageMakerLLM:
    return SageMakerLLM(ENDPOINT, COMPONENT, client=client, connect_timeout_s=2, read_timeout_s=20)


def _answer(stub: Stubber, payload: Any) -> None:
    raw = json.dumps(payload).encode()
    stub.add_response(
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(raw), len(raw)), "ContentType": "application/json"},
        {
            "EndpointName": ENDPOINT,
            "InferenceComponentName": COMPONENT,
            "Body": ANY,
            "ContentType": "application/json",
            "Accept": "application/json",
        },
    )


GENERATED = [
    {
        "generated_text": '{"author": "Paul Iusztin"}',
        "details": {
            "finish_reason": "eos_token",
            "generated_tokens": 9,
            "prefill": [],
            "tokens": [],
            "seed": None,
        },
    }
]
CHAT = {
    "id": "",
    "object": "chat.completion",
    "created": 1764201600,
    "model": "mlabonne/TwinLlama-3.1-8B-DPO",
    "system_fingerprint": "3.3.6-native",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "An answer.### Instruction"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 812, "completion_tokens": 120, "total_tokens": 932},
}


def test_complete_sends_a_tgi_generate_request_with_a_json_grammar(
    llm: SageMakerLLM, client: Any, stub: Stubber
) -> None:
    # Given an endpoint that answers like SageMaker's TGI container (a one-element list)
    recorder = Recorder(client)
    _answer(stub, GENERATED)
    assert not tgi_spec().errors("SagemakerResponse", GENERATED[0])

    # When a structured completion is asked for
    generation = llm.complete("Who wrote this?", PARAMS, json_schema=AUTHOR_SCHEMA)

    # Then the body is a valid CompatGenerateRequest with TGI's json grammar
    body = recorder.body()
    assert not tgi_spec().errors("SagemakerRequest", body)
    assert not tgi_spec().errors("CompatGenerateRequest", body)
    assert body["inputs"] == "Who wrote this?"
    assert body["parameters"]["grammar"] == {"type": "json", "value": AUTHOR_SCHEMA}
    assert body["parameters"]["return_full_text"] is False
    assert body["parameters"]["details"] is True
    assert body["parameters"]["stop"] == ["### Instruction"]
    # And the answer is read from generated_text and details
    assert json.loads(generation.text) == {"author": "Paul Iusztin"}
    assert generation.completion_tokens == 9
    assert generation.prompt_tokens is None
    assert generation.finish_reason == "eos_token"


def test_chat_sends_a_tgi_chat_request_and_reads_usage(
    llm: SageMakerLLM, client: Any, stub: Stubber
) -> None:
    # Given an endpoint answering a ChatCompletion
    recorder = Recorder(client)
    _answer(stub, CHAT)
    assert not tgi_spec().errors("ChatCompletion", CHAT)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]

    # When chatting with a response format
    generation = llm.chat(messages, PARAMS, json_schema=AUTHOR_SCHEMA)

    # Then the body is a valid ChatRequest with TGI's GrammarType response_format
    body = recorder.body()
    assert not tgi_spec().errors("SagemakerRequest", body)
    assert not tgi_spec().errors("ChatRequest", body)
    assert body["messages"] == messages
    assert body["max_tokens"] == 64
    assert body["response_format"] == {"type": "json", "value": AUTHOR_SCHEMA}
    # And the text (stop sequence removed) and usage come back
    assert generation.text == "An answer."
    assert (generation.prompt_tokens, generation.completion_tokens) == (812, 120)


def test_greedy_params_become_what_tgi_accepts(
    llm: SageMakerLLM, client: Any, stub: Stubber
) -> None:
    # Given temperature 0 and top_p 1, which TGI's /generate rejects with 422 when sent as is
    recorder = Recorder(client)
    _answer(stub, GENERATED)
    _answer(stub, CHAT)
    greedy = GenerationParams(max_new_tokens=8, temperature=0.0, top_p=1.0)

    # When completing and chatting
    llm.complete("q", greedy)
    llm.chat([{"role": "user", "content": "q"}], greedy)

    # Then generate asks for greedy decoding and chat sends temperature 0 (TGI's greedy switch)
    generate, chat = recorder.body(0), recorder.body(1)
    assert generate["parameters"]["do_sample"] is False
    assert "temperature" not in generate["parameters"]
    assert "top_p" not in generate["parameters"]
    assert chat["temperature"] == 0.0
    assert "top_p" not in chat
    assert not tgi_spec().errors("CompatGenerateRequest", generate)


ORIGINAL_424 = json.dumps({"error": "Request failed during generation", "error_type": "generation"})
ORIGINAL_500 = json.dumps({"error": "Incomplete generation", "error_type": "incomplete_generation"})
ORIGINAL_429 = json.dumps({"error": "Model is overloaded", "error_type": "overloaded"})


def _model_error(status: int, original: str) -> dict[str, Any]:
    return {
        "service_error_code": "ModelError",
        "service_message": f"Received client error ({status}) from primary "
        f'with message "{original}". '
        "See https://eu-west-1.console.aws.amazon.com/cloudwatch/home?region=eu-west-1 "
        "in account 123456789012 for more information.",
        "http_status_code": 424,
        "modeled_fields": {
            "OriginalStatusCode": status,
            "OriginalMessage": original,
            "LogStreamArn": "arn:aws:logs:eu-west-1:123456789012:log-group:/aws/sagemaker/x",
        },
    }


def _error(code: str, status: int, message: str) -> dict[str, Any]:
    return {"service_error_code": code, "service_message": message, "http_status_code": status}


ERROR_CASES = [
    # (SageMaker error, expected class, HTTP status, code, Retry-After)
    (_model_error(422, TGI_422), BadRequest, 400, "model_input_invalid", None),
    (_model_error(424, ORIGINAL_424), ModelError, 502, "model_error", None),
    (_model_error(500, ORIGINAL_500), ModelError, 502, "model_error", None),
    (_model_error(429, ORIGINAL_429), Throttled, 429, "model_overloaded", 2),
    (
        {
            **_model_error(0, ""),
            "service_message": 'Received server error (0) from primary with message "Your '
            "invocation timed out while waiting for a response from container primary. Review "
            "the latency metrics for each container in Amazon CloudWatch, resolve the issue, "
            'and try again."',
        },
        UpstreamTimeout,
        504,
        "model_timeout",
        None,
    ),
    (
        _error("ValidationError", 400, f"Endpoint {ENDPOINT} of account 123456789012 not found."),
        ModelUnavailable,
        503,
        "endpoint_not_found",
        300,
    ),
    (
        _error("ValidationError", 400, f"Inference Component {COMPONENT} not found."),
        ModelUnavailable,
        503,
        "endpoint_not_found",
        300,
    ),
    (
        _error(
            "ValidationError",
            400,
            "Inference Component has no capacity to process this request. ApplicationAutoScaling "
            "may be in-progress (if configured) or try to increase the capacity by invoking "
            "UpdateInferenceComponentRuntimeConfig API.",
        ),
        ModelUnavailable,
        503,
        "model_scaling_from_zero",
        60,
    ),
    (
        _error(
            "ValidationError",
            400,
            "Inference Component Name header is required for endpoints to which you plan to "
            "deploy inference components. Please include Inference Component Name header or "
            "consider using SageMaker models.",
        ),
        ModelUnavailable,
        503,
        "endpoint_misconfigured",
        None,
    ),
    (
        _error("ModelNotReadyException", 429, "Model is not ready, try again."),
        ModelUnavailable,
        503,
        "model_not_ready",
        30,
    ),
    (
        _error("ServiceUnavailable", 503, "Service unavailable"),
        ModelUnavailable,
        503,
        "sagemaker_unavailable",
        5,
    ),
    (
        _error("InternalDependencyException", 530, "Internal dependency failed"),
        ModelUnavailable,
        503,
        "sagemaker_unavailable",
        5,
    ),
    (_error("ThrottlingException", 400, ""), Throttled, 429, "sagemaker_throttled", 2),
    (_error("InternalFailure", 500, "Internal failure"), ModelError, 502, "model_error", None),
]


@pytest.mark.parametrize(
    ("sagemaker_error", "expected", "status", "code", "retry_after"),
    ERROR_CASES,
    ids=[f"{c[0]['service_error_code']}-{c[3]}-{i}" for i, c in enumerate(ERROR_CASES)],
)
def test_sagemaker_errors_map_to_the_api_error_contract(
    llm: SageMakerLLM,
    stub: Stubber,
    sagemaker_error: dict[str, Any],
    expected: type[ApiError],
    status: int,
    code: str,
    retry_after: int | None,
) -> None:
    # Given SageMaker answering invoke_endpoint with this error
    stub.add_client_error("invoke_endpoint", **sagemaker_error)

    # When generating
    with pytest.raises(expected) as raised:
        llm.complete("q", PARAMS)

    # Then the API error carries the contract's status, code and Retry-After
    error = raised.value
    assert (error.status, error.code, error.retry_after_s) == (status, code, retry_after)
    # And its message is clean: no account id, ARN, URL or traceback
    for leak in ("123456789012", "arn:", "https://", "Traceback"):
        assert leak not in error.message


def test_tgi_validation_reason_reaches_the_client(llm: SageMakerLLM, stub: Stubber) -> None:
    # Given TGI rejecting the input through SageMaker
    stub.add_client_error("invoke_endpoint", **_model_error(422, TGI_422))

    # When generating, Then the 400 quotes TGI's reason
    with pytest.raises(BadRequest, match="must be <= 1512"):
        llm.complete("q", PARAMS)


class Transport:
    """Raises a transport error from botocore's send step, where real ones arise; counts sends."""

    def __init__(self, client: Any, error: Exception) -> None:
        self.sends = 0
        self._error = error
        client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", self._send)

    def _send(self, **_: Any) -> None:
        self.sends += 1
        raise self._error


def test_read_timeout_is_an_upstream_timeout_and_is_not_retried(llm: SageMakerLLM) -> None:
    # Given a client whose read times out (botocore would retry it on its own)
    client = llm.client_for(None)
    transport = Transport(client, ReadTimeoutError(endpoint_url="https://runtime.sagemaker"))

    # When generating
    with pytest.raises(UpstreamTimeout) as raised:
        llm.complete("q", PARAMS)

    # Then it is a 504 naming the configured read timeout, after a single attempt
    assert raised.value.status == 504
    assert "20 s" in raised.value.message
    assert transport.sends == 1


@pytest.mark.parametrize(
    "error",
    [
        EndpointConnectionError(endpoint_url="https://runtime.sagemaker"),
        ConnectTimeoutError(endpoint_url="https://runtime.sagemaker"),
    ],
    ids=["endpoint-connection", "connect-timeout"],
)
def test_connection_failures_are_retried_once_then_unavailable(
    llm: SageMakerLLM, error: Exception
) -> None:
    # Given a SageMaker runtime that cannot be reached
    transport = Transport(llm.client_for(None), error)

    # When generating
    with pytest.raises(ModelUnavailable) as raised:
        llm.chat([{"role": "user", "content": "q"}], PARAMS)

    # Then the request was never sent, so it was tried twice, then answered 503 + Retry-After
    assert transport.sends == 2
    assert (raised.value.status, raised.value.code) == (503, "model_unreachable")
    assert raised.value.retry_after_s == 10


def test_malformed_body_is_a_model_error(llm: SageMakerLLM, stub: Stubber) -> None:
    # Given an endpoint answering a body that is not JSON
    raw = b"<html>502 Bad Gateway</html>"
    stub.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(raw), len(raw))}, None)

    # When generating, Then it is a 502 model_bad_response
    with pytest.raises(ModelError) as raised:
        llm.complete("q", PARAMS)
    assert (raised.value.status, raised.value.code) == (502, "model_bad_response")


def test_clients_use_explicit_timeouts_and_bounded_adaptive_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an adapter that builds its own clients
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    llm = SageMakerLLM(ENDPOINT, connect_timeout_s=2, read_timeout_s=20)

    # When asking for the default client and one for a 3.2 s helper call
    default, helper = llm.client_for(None), llm.client_for(3.2)

    # Then each carries its timeouts, and both retry adaptively at most twice in total
    assert (default.meta.config.connect_timeout, default.meta.config.read_timeout) == (2, 20)
    assert helper.meta.config.read_timeout == 4
    assert helper is llm.client_for(3.9)
    for client in (default, helper):
        assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 2}
    # And the worst case of one call is what the module documents
    assert worst_case_call_s(2, 20) == 27
    assert worst_case_call_s(2, 4) == 11


def test_build_llm_picks_the_configured_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")

    def build(url: str | None, endpoint: str | None) -> object:
        return build_llm(
            url=url,
            api="openai",
            endpoint=endpoint,
            inference_component=COMPONENT,
            connect_timeout_s=2,
            read_timeout_s=20,
        )

    # Neither configured: no adapter (the caller answers 503 llm_not_configured)
    assert build(None, None) is None
    # A URL: plain HTTP with its protocol
    http = build("http://127.0.0.1:8080", None)
    assert isinstance(http, HttpLLM)
    assert http.api == "openai"
    # An endpoint wins over a URL
    sagemaker = build("http://127.0.0.1:8080", ENDPOINT)
    assert isinstance(sagemaker, SageMakerLLM)
    assert sagemaker.description == f"sagemaker:{ENDPOINT}/{COMPONENT}"
