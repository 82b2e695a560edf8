"""The OpenAI-compatible routes end to end, with the real `openai` Python SDK as the client: local
mode over real HTTP (uvicorn + the Lambda's app + the local gateway) in front of the TGI-protocol
fake (TGI 3.3.6's OpenAPI spec, docs/contracts/tgi-openapi.json).

What the client relies on is OpenAI's API reference (https://platform.openai.com/docs/api-reference/chat):
`chat.completion` and `chat.completion.chunk` objects, a stream ended by `data: [DONE]`, with
`stream_options.include_usage` one last chunk whose `choices` is empty and that carries `usage`
(the others `usage: null`); errors as `{"error": {"message", "type", "param", "code"}}` with the
HTTP status (the SDK maps 400 to BadRequestError, 403 to PermissionDeniedError, 404 to
NotFoundError, and raises APIError for a `data: {"error": ...}` event inside a stream, see
openai-python `_streaming.py`); the key sent as `Authorization: Bearer <api_key>`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionContentPartParam, ChatCompletionMessageParam

from devkit.fakes.memory import FakeWorld, fake_world
from devkit.fakes.tgi_server import Fault, GenerationRequest, TgiServer
from rag.adapters.llm.http import HttpLLM
from tools.local_server import LocalServer, local_app

KEY = "local-test-key-for-openai-clients"
ANSWER = "DPO needs no separate reward model: the policy's log-ratio plays that role."
QUESTION = "Does DPO need a reward model?"


class Recorder:
    """A TGI responder that keeps what it was asked."""

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    def __call__(self, request: GenerationRequest) -> str:
        self.requests.append(request)
        return ANSWER


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def world(recorder: Recorder) -> Iterator[tuple[FakeWorld, TgiServer]]:
    with TgiServer(recorder, token_delay_s=0.005) as tgi:
        llm = HttpLLM(tgi.url, connect_timeout_s=2, read_timeout_s=10)
        # No helper calls: every generation request the fake sees is the answer's.
        env = {"SELF_QUERY_ENABLED": "false", "EXPANSION_N": "1"}
        yield fake_world(llm=llm, env=env), tgi


@pytest.fixture
def server(world: tuple[FakeWorld, TgiServer]) -> Iterator[LocalServer]:
    with LocalServer(local_app(world[0].deps, api_key=KEY)) as running:
        yield running


def client(server: LocalServer, *, prefix: str = "/v1", api_key: str = KEY) -> openai.OpenAI:
    # No retries: a retried 5xx would hide what the server answered.
    return openai.OpenAI(base_url=f"{server.url}{prefix}", api_key=api_key, max_retries=0)


def ask(**extra: Any) -> dict[str, Any]:
    return {"model": "llm-twin", "messages": [{"role": "user", "content": QUESTION}], **extra}


def test_buffered_answer_with_retrieved_context_usage_and_sources(
    world: tuple[FakeWorld, TgiServer], server: LocalServer, recorder: Recorder
) -> None:
    completion = client(server).chat.completions.create(**ask())

    assert completion.object == "chat.completion"
    assert completion.model == "llm-twin"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    extras = completion.model_extra or {}
    sources = extras["sources"]
    assert sources and {"id", "collection", "author_full_name", "link", "score"} <= set(sources[0])
    # The same pipeline as /rag: the model saw the query and the retrieved chunks.
    prompt = recorder.requests[-1].prompt
    assert QUESTION in prompt and prompt.count("<source index=") == len(sources)
    trace = world[0].sink.events[-1]
    assert trace["name"] == "rag" and trace["input"]["query"] == QUESTION
    assert trace["trace_id"] == extras["trace_id"]


def test_streamed_chunks_end_with_usage_then_done(server: LocalServer) -> None:
    stream = client(server).chat.completions.create(
        **ask(stream=True, stream_options={"include_usage": True})
    )
    chunks = list(stream)  # the SDK stops at `data: [DONE]`

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks[1:]}) == 1
    first, *middle, finish, usage_chunk = chunks
    assert first.choices[0].delta.role == "assistant"
    assert (first.model_extra or {})["sources"]
    text = "".join(c.choices[0].delta.content or "" for c in middle)
    assert text == ANSWER
    assert len(middle) > 1  # piece by piece, not one block
    assert finish.choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None and usage_chunk.usage.completion_tokens > 0


def test_earlier_turns_are_context_the_last_user_message_is_the_query(
    world: tuple[FakeWorld, TgiServer], server: LocalServer, recorder: Recorder
) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Who wrote about DPO?"},
        {"role": "assistant", "content": "Maxime wrote about it."},
        {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
    ]
    client(server).chat.completions.create(model="llm-twin", messages=messages)

    prompt = recorder.requests[-1].prompt
    assert '<turn role="user">\nWho wrote about DPO?\n</turn>' in prompt
    assert '<turn role="assistant">\nMaxime wrote about it.\n</turn>' in prompt
    assert prompt.index("<conversation>") < prompt.index("<query>\n" + QUESTION)
    assert "pirate" not in prompt  # a client's system prompt does not replace the twin's
    trace = world[0].sink.events[-1]
    assert trace["input"]["query"] == QUESTION and trace["input"]["history_turns"] == 2


def test_client_parameters_reach_the_model_within_the_model_config(
    world: tuple[FakeWorld, TgiServer], server: LocalServer, recorder: Recorder
) -> None:
    limit = world[0].deps.profile.generation.max_new_tokens_limit
    client(server).chat.completions.create(
        **ask(temperature=0.3, top_p=0.9, max_tokens=limit + 1000, stop=["END"], user="u-42")
    )

    sent = recorder.requests[-1]
    params = sent.body.get("parameters") or sent.body
    assert params["temperature"] == 0.3 and params["top_p"] == 0.9
    assert sent.max_new_tokens is not None and sent.max_new_tokens <= limit
    assert "END" in sent.stop
    assert world[0].sink.events[-1]["input"]["user"] == "u-42"


def test_citations_block_on_request(server: LocalServer) -> None:
    extra = {"rag": {"citations": True, "k": 2}}
    completion = client(server).chat.completions.create(**ask(extra_body=extra))
    stream = client(server).chat.completions.create(**ask(stream=True, extra_body=extra))
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    content = completion.choices[0].message.content or ""
    sources = (completion.model_extra or {})["sources"]
    assert content.startswith(ANSWER) and "\n\nSources:\n1. " in content
    assert 0 < len(sources) <= 2 and content.count("\n") == len(sources) + 2
    assert streamed == content


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"temperature": 3}, "temperature"),
    ],
)
def test_unsupported_or_invalid_parameters_are_openai_400s_naming_them(
    server: LocalServer, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).chat.completions.create(**ask(**extra))
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == param
    assert body["type"] == "invalid_request_error" and param in body["message"]


def test_image_content_is_refused_by_its_position(server: LocalServer) -> None:
    content: list[ChatCompletionContentPartParam] = [
        {"type": "text", "text": QUESTION},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).chat.completions.create(
            model="llm-twin", messages=[{"role": "user", "content": content}]
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "messages[0].content[1]"


def test_unknown_model_is_404_and_models_lists_the_twin(server: LocalServer) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(server).chat.completions.create(**{**ask(), "model": "gpt-4o"})
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "model_not_found"
    assert [m.id for m in client(server).models.list()] == ["llm-twin"]


def test_model_failure_mid_stream_raises_in_the_client(
    world: tuple[FakeWorld, TgiServer], server: LocalServer
) -> None:
    world[1].queue(Fault.stream_error(2, "CUDA out of memory"))
    stream = client(server).chat.completions.create(**ask(stream=True))
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "server_error" and body["code"]


def test_failure_before_the_stream_keeps_status_and_openai_shape(server: LocalServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).chat.completions.create(
            model="llm-twin",
            messages=[{"role": "assistant", "content": "hello"}],
            stream=True,
        )
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "messages"


def test_auth_bearer_and_x_api_key_both_work_a_wrong_key_is_refused(server: LocalServer) -> None:
    assert client(server).models.list().data  # the SDK sends Authorization: Bearer
    with pytest.raises(openai.PermissionDeniedError):
        client(server, api_key="wrong").chat.completions.create(**ask())
    response = httpx.post(
        f"{server.url}/v1/chat/completions", json=ask(), headers={"x-api-key": KEY}, timeout=60
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == ANSWER


def test_deployed_base_url_shape_stage_v1_then_resource_path(server: LocalServer) -> None:
    """Deployed, `v1` is the API Gateway stage and the app sees `/chat/completions` (the Lambda
    Web Adapter forwards the event's resource path; API Gateway REST proxy events carry `path`
    without the stage: https://docs.aws.amazon.com/apigateway/latest/developerguide/set-up-lambda-proxy-integrations.html)."""
    completion = client(server, prefix="").chat.completions.create(**ask())
    assert completion.choices[0].message.content == ANSWER
