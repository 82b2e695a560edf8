"""The LLM adapters over real HTTP against the TGI-protocol fake: HttpLLM on TGI and OpenAI routes,
and SageMakerLLM through botocore on SageMaker's /endpoints/{name}/invocations route."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from devkit.fakes.tgi_server import Fault, TgiServer, echo, fixed, json_or, tgi_spec
from rag.adapters.llm.http import HttpLLM
from rag.adapters.llm.sagemaker import SageMakerLLM
from rag.domain.errors import (
    ApiError,
    BadRequest,
    ModelError,
    ModelUnavailable,
    Throttled,
    UpstreamTimeout,
)
from rag.domain.ports import GenerationParams

PARAMS = GenerationParams(max_new_tokens=32, temperature=0.7, top_p=0.9, stop=("###",))
QUERIES_SCHEMA = {
    "type": "object",
    "properties": {"queries": {"type": "array", "items": {"type": "string"}, "minItems": 2}},
    "required": ["queries"],
}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]
READ_TIMEOUT_S = 0.3


@pytest.fixture
def server() -> Iterator[TgiServer]:
    with TgiServer(json_or(echo())) as running:
        yield running


@pytest.fixture
def llm(server: TgiServer) -> Iterator[HttpLLM]:
    adapter = HttpLLM(server.url, connect_timeout_s=1, read_timeout_s=READ_TIMEOUT_S)
    yield adapter
    adapter.close()


def test_complete_posts_a_valid_generate_request(server: TgiServer, llm: HttpLLM) -> None:
    # When completing a raw prompt
    generation = llm.complete("Tell me about RAG", PARAMS)

    # Then /generate got a spec-valid request and the echoed text comes back with its token count
    (request,) = server.requests
    assert request.path == "/generate"
    assert not tgi_spec().errors("GenerateRequest", request.body)
    assert generation.text == "Tell me about RAG"
    assert generation.completion_tokens == 4
    assert generation.finish_reason == "eos_token"


def test_chat_with_a_schema_gets_json_that_honours_it(server: TgiServer, llm: HttpLLM) -> None:
    # When chatting with a JSON schema
    generation = llm.chat(MESSAGES, PARAMS, json_schema=QUERIES_SCHEMA)

    # Then TGI's response_format was sent and the answer parses against the schema
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.body["response_format"] == {"type": "json", "value": QUERIES_SCHEMA}
    assert len(json.loads(generation.text)["queries"]) == 2
    assert generation.prompt_tokens == 3  # the fake's tokens: "Be brief. Hello?"


def test_stop_sequences_and_token_limit_shape_the_answer(server: TgiServer, llm: HttpLLM) -> None:
    # Given a model whose answer runs into a stop sequence, then a long one
    server.responder = fixed("The answer.### Instruction: more")
    stopped = llm.complete("q", PARAMS)
    server.responder = fixed(" ".join(["word"] * 50))
    limited = llm.complete("q", GenerationParams(max_new_tokens=5, temperature=0.5, top_p=0.5))

    # Then the stop sequence is cut off, and generation stops at max_new_tokens
    assert (stopped.text, stopped.finish_reason) == ("The answer.", "stop_sequence")
    assert (limited.completion_tokens, limited.finish_reason) == (5, "length")


def test_openai_protocol_uses_completions_and_json_schema_format() -> None:
    # Given an OpenAI-compatible server (vLLM, Ollama)
    with TgiServer(json_or(echo()), flavor="openai") as server:
        llm = HttpLLM(server.url, api="openai", model="twin", connect_timeout_s=1, read_timeout_s=1)
        # When completing and chatting with a schema
        completion = llm.complete("Tell me", PARAMS)
        chat = llm.chat(MESSAGES, PARAMS, json_schema=QUERIES_SCHEMA)

    # Then /v1/completions and /v1/chat/completions got OpenAI's shapes
    completions, chats = server.requests
    assert (completions.path, completions.body["prompt"], completions.body["model"]) == (
        "/v1/completions",
        "Tell me",
        "twin",
    )
    assert chats.body["response_format"]["type"] == "json_schema"
    assert chats.body["response_format"]["json_schema"]["schema"] == QUERIES_SCHEMA
    assert completion.text == "Tell me"
    assert len(json.loads(chat.text)["queries"]) == 2


CALLS = {
    "complete": lambda llm: llm.complete("q", PARAMS),
    "chat": lambda llm: llm.chat(MESSAGES, PARAMS),
}
FAULTS = [
    # (fault, expected class, status, code, Retry-After)
    (
        Fault.http_status(422, "Input validation error: prompt too long"),
        BadRequest,
        400,
        "model_input_invalid",
        None,
    ),
    (
        Fault.http_status(424, "Request failed during generation"),
        ModelError,
        502,
        "model_error",
        None,
    ),
    (Fault.http_status(500, "Incomplete generation"), ModelError, 502, "model_error", None),
    (Fault.http_status(429, "Model is overloaded"), Throttled, 429, "model_overloaded", 2),
    (
        Fault.http_status(429, "Model is overloaded", **{"Retry-After": "7"}),
        Throttled,
        429,
        "model_overloaded",
        7,
    ),
    (Fault.malformed(), ModelError, 502, "model_bad_response", None),
    (Fault.wrong_shape(), ModelError, 502, "model_bad_response", None),
    (Fault.close(), ModelError, 502, "model_connection_lost", None),
    (Fault.hang(30), UpstreamTimeout, 504, "model_timeout", None),
]


@pytest.mark.parametrize(("fault", "expected", "status", "code", "retry_after"), FAULTS)
@pytest.mark.parametrize("call", ["complete", "chat"])
def test_faults_map_to_the_api_error_contract(
    server: TgiServer,
    llm: HttpLLM,
    call: str,
    fault: Fault,
    expected: type[ApiError],
    status: int,
    code: str,
    retry_after: int | None,
) -> None:
    # Given a server misbehaving this way
    server.queue(fault)

    # When generating
    with pytest.raises(expected) as raised:
        CALLS[call](llm)

    # Then the error has the contract's status, code and Retry-After, and a clean message
    error = raised.value
    assert (error.status, error.code, error.retry_after_s) == (status, code, retry_after)
    assert "Traceback" not in error.message
    # And nothing was retried once the request had reached the server
    assert len(server.requests) == 1


def test_tgi_reason_is_quoted_in_the_bad_request(server: TgiServer, llm: HttpLLM) -> None:
    server.queue(
        Fault.http_status(422, "Input validation error: `inputs` must have less than 4096 tokens")
    )

    with pytest.raises(BadRequest, match="must have less than 4096 tokens"):
        llm.complete("q", PARAMS)


def test_an_invalid_request_is_rejected_by_the_server_as_tgi_would(llm: HttpLLM) -> None:
    # Given more stop sequences than TGI accepts
    too_many = GenerationParams(max_new_tokens=8, temperature=0.5, top_p=0.5, stop=tuple("abcde"))

    # When completing, Then the server's 422 becomes a 400 naming the problem
    with pytest.raises(BadRequest, match="stop"):
        llm.complete("q", too_many)


def test_read_timeout_per_call_overrides_the_default(server: TgiServer) -> None:
    # Given an adapter with a long default read timeout and a server that hangs
    llm = HttpLLM(server.url, connect_timeout_s=1, read_timeout_s=30)
    server.set_fault(Fault.hang(30))

    # When a helper call passes its own short timeout
    with pytest.raises(UpstreamTimeout) as raised:
        llm.chat(MESSAGES, PARAMS, timeout_s=0.2)

    # Then that timeout is the one applied
    assert "0.2 s" in raised.value.message
    server.set_fault(None)


def test_connection_refused_is_model_unavailable() -> None:
    # Given a port nobody listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    llm = HttpLLM(f"http://127.0.0.1:{port}", connect_timeout_s=1, read_timeout_s=1)

    # When generating, Then it is a 503 with Retry-After
    with pytest.raises(ModelUnavailable) as raised:
        llm.complete("q", PARAMS)
    assert (raised.value.status, raised.value.code, raised.value.retry_after_s) == (
        503,
        "model_unreachable",
        10,
    )


def test_concurrent_calls_share_one_pool(server: TgiServer, llm: HttpLLM) -> None:
    # Given a model taking a while per call
    server.delay_s = 0.05

    # When four calls run at once
    with ThreadPoolExecutor(max_workers=4) as pool:
        texts = list(pool.map(lambda i: llm.complete(f"query {i}", PARAMS).text, range(4)))

    # Then each got its own answer
    assert sorted(texts) == [f"query {i}" for i in range(4)]
    assert len(server.requests) == 4


# --------------------------------------------------------------------------- SageMaker over HTTP


@pytest.fixture
def sagemaker(server: TgiServer, monkeypatch: pytest.MonkeyPatch) -> SageMakerLLM:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    return SageMakerLLM(
        "twin-llm",
        "twin-llm-ic",
        connect_timeout_s=1,
        read_timeout_s=READ_TIMEOUT_S,
        endpoint_url=server.url,
    )


def test_sagemaker_invocations_reach_the_container_routes(
    server: TgiServer, sagemaker: SageMakerLLM
) -> None:
    # When generating and chatting through botocore
    generation = sagemaker.complete("Tell me about RAG", PARAMS)
    chat = sagemaker.chat(MESSAGES, PARAMS, json_schema=QUERIES_SCHEMA)

    # Then both went to the endpoint's invocations with the inference component header
    for request in server.requests:
        assert request.path == "/endpoints/twin-llm/invocations"
        assert request.headers["X-Amzn-SageMaker-Inference-Component"] == "twin-llm-ic"
        assert not tgi_spec().errors("SagemakerRequest", request.body)
    # And the list-wrapped generate answer and the chat answer are read
    assert generation.text == "Tell me about RAG"
    assert len(json.loads(chat.text)["queries"]) == 2


def test_sagemaker_model_error_carries_tgi_reason(
    server: TgiServer, sagemaker: SageMakerLLM
) -> None:
    # Given the container rejecting the input, which SageMaker wraps in a ModelError
    server.queue(Fault.http_status(422, "Input validation error: `top_n_tokens` is too large"))

    # When generating, Then the client gets TGI's reason as a 400
    with pytest.raises(BadRequest, match="top_n_tokens"):
        sagemaker.complete("q", PARAMS)


def test_sagemaker_read_timeout_is_not_retried(server: TgiServer, sagemaker: SageMakerLLM) -> None:
    # Given a container that does not answer within the read timeout
    server.set_fault(Fault.hang(30))

    # When generating
    with pytest.raises(UpstreamTimeout):
        sagemaker.complete("q", PARAMS)

    # Then botocore did not send it a second time
    server.set_fault(None)
    assert len(server.requests) == 1


def test_sagemaker_fast_transient_failure_is_retried_once(
    server: TgiServer, sagemaker: SageMakerLLM
) -> None:
    # Given SageMaker unavailable for one call
    server.queue(Fault.aws_error("ServiceUnavailable", 503, "Service unavailable"))

    # When generating, Then the retry answers
    assert sagemaker.complete("again", PARAMS).text == "again"
    assert len(server.requests) == 2


def test_sagemaker_scaled_to_zero_is_503_with_retry_after(
    server: TgiServer, sagemaker: SageMakerLLM
) -> None:
    server.queue(
        Fault.aws_error(
            "ValidationError",
            400,
            "Inference Component has no capacity to process this request. ApplicationAutoScaling "
            "may be in-progress (if configured) or try to increase the capacity by invoking "
            "UpdateInferenceComponentRuntimeConfig API.",
        )
    )

    with pytest.raises(ModelUnavailable) as raised:
        sagemaker.chat(MESSAGES, PARAMS)

    assert (raised.value.code, raised.value.headers()) == (
        "model_scaling_from_zero",
        {"Retry-After": "60"},
    )
