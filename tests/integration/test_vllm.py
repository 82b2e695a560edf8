"""vLLM as the serving engine, over real HTTP against the vLLM-protocol fake (devkit/fakes/
vllm_server.py): the OpenAI-compatible adapter in local mode (LLM_URL + LLM_API=openai), and the
SageMaker adapter with engine vllm through botocore on SageMaker's runtime routes.

Sources the fake and these tests follow:
- vLLM's SageMaker routes: `/invocations` takes a chat or a completion body and routes it by its
  shape, `/ping` is its health (vllm-project/vllm `vllm/entrypoints/sagemaker/routes.py`).
- vLLM's request models: completions take `response_format` json_schema for structured output
  (no `guided_json` any more) (`vllm/entrypoints/openai/completion/protocol.py`).
- vLLM's ErrorResponse `{"error": {"message", "type", "param", "code"}}` and its streamed form,
  one `data: {"error": ...}` event (vllm `entrypoints/openai/engine/protocol.py`; quoted in
  vllm-project/guidellm issue "streaming error response format").
- AWS's vLLM container on SageMaker: OpenAI bodies at /invocations through InvokeEndpoint, and
  `stream: true` through InvokeEndpointWithResponseStream (aws/model-hosting-container-standards
  docs/sagemaker/01_quickstart.md "Making Inference Requests").
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from devkit.fakes.memory import fake_world
from devkit.fakes.tgi_server import MODEL_ID, echo, fixed, json_or
from devkit.fakes.vllm_server import VllmFault, VllmServer
from rag.adapters.llm.http import HttpLLM
from rag.adapters.llm.sagemaker import SageMakerLLM
from rag.domain.errors import BadRequest, ModelError
from rag.domain.ports import GenerationParams
from rag.settings import Settings
from rag.wiring import llm_from_settings
from tests.integration.test_streaming import sse_events
from tools.local_server import LocalServer, local_app

PARAMS = GenerationParams(max_new_tokens=32, temperature=0.7, top_p=0.9, stop=("###",))
QUERIES_SCHEMA = {
    "type": "object",
    "properties": {"queries": {"type": "array", "items": {"type": "string"}, "minItems": 2}},
    "required": ["queries"],
}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]
ANSWER = "DPO needs no separate reward model: the policy's log-ratio plays that role."
STALL_S = 5.0


@pytest.fixture
def vllm() -> Iterator[VllmServer]:
    with VllmServer(json_or(echo())) as server:
        yield server


@pytest.fixture
def sagemaker(vllm: VllmServer, monkeypatch: pytest.MonkeyPatch) -> SageMakerLLM:
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
        read_timeout_s=5,
        endpoint_url=vllm.url,
        engine="vllm",
        model=MODEL_ID,
    )


# --------------------------------------------------------------------------- SageMaker, engine vllm


def test_sagemaker_sends_openai_bodies_to_invocations(
    vllm: VllmServer, sagemaker: SageMakerLLM
) -> None:
    # When completing the alpaca prompt and asking the chat route for structured JSON
    generation = sagemaker.complete("### Instruction: tell me about RAG", PARAMS)
    chat = sagemaker.chat(MESSAGES, PARAMS, json_schema=QUERIES_SCHEMA)

    # Then both went to the endpoint's invocations with the inference component header,
    completion_request, chat_request = vllm.requests
    for request in (completion_request, chat_request):
        assert request.path == "/endpoints/twin-llm/invocations"
        assert request.headers["X-Amzn-SageMaker-Inference-Component"] == "twin-llm-ic"
        assert request.body["model"] == MODEL_ID
    # as a completion (prompt, max_tokens) and a chat whose schema is vLLM's response_format
    assert completion_request.body["prompt"] == "### Instruction: tell me about RAG"
    assert completion_request.body["max_tokens"] == PARAMS.max_new_tokens
    assert chat_request.body["response_format"]["json_schema"]["schema"] == QUERIES_SCHEMA
    # And vLLM's answers are read: the stop string already cut out, the schema honoured
    assert generation.text == ""  # the echoed prompt ends at the stop string "###"
    assert generation.finish_reason == "stop"
    assert len(json.loads(chat.text)["queries"]) == 2
    assert chat.prompt_tokens is not None and chat.completion_tokens is not None


def test_completion_helpers_get_guided_json_through_response_format(
    vllm: VllmServer, sagemaker: SageMakerLLM
) -> None:
    # When a helper (alpaca model) asks a completion for JSON
    generation = sagemaker.complete("extract the author", PARAMS, json_schema=QUERIES_SCHEMA)

    # Then vLLM was given the schema in a field it enforces, and the answer is that JSON
    (request,) = vllm.requests
    assert "guided_json" not in request.body
    assert request.body["response_format"]["type"] == "json_schema"
    assert len(json.loads(generation.text)["queries"]) == 2


@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_sagemaker_streams_vllm_chunks_through_payload_parts(
    vllm: VllmServer, sagemaker: SageMakerLLM, kind: str
) -> None:
    vllm.responder = fixed(ANSWER)
    # When streaming through InvokeEndpointWithResponseStream (payload parts cut mid-line)
    if kind == "chat":
        stream = sagemaker.stream_chat(MESSAGES, PARAMS, stall_timeout_s=STALL_S)
    else:
        stream = sagemaker.stream_complete("q", PARAMS, stall_timeout_s=STALL_S)
    text = "".join(stream)

    # Then the request asked vLLM to stream, and the chunks up to [DONE] make the answer
    (request,) = vllm.requests
    assert request.path == "/endpoints/twin-llm/invocations-response-stream"
    assert request.body["stream"] is True
    assert text == ANSWER
    assert stream.result().finish_reason == "stop"
    assert stream.result().completion_tokens == len(ANSWER.split())


def test_sagemaker_maps_vllms_context_length_error_to_400(
    vllm: VllmServer, sagemaker: SageMakerLLM
) -> None:
    # Given a prompt longer than the served max_model_len (vLLM answers 400 BadRequestError,
    # which SageMaker wraps in a ModelError with the original status and body)
    long_prompt = "word " * vllm.max_model_len

    # When completing, Then the client gets a 400 with vLLM's reason
    with pytest.raises(BadRequest, match="maximum context length is 4096") as caught:
        sagemaker.complete(long_prompt, PARAMS)
    assert caught.value.code == "model_input_invalid"


def test_sagemaker_maps_an_engine_failure_to_502(vllm: VllmServer, sagemaker: SageMakerLLM) -> None:
    vllm.queue(VllmFault.http_status(500, "EngineCore encountered an issue"))
    with pytest.raises(ModelError, match="EngineCore encountered an issue") as caught:
        sagemaker.chat(MESSAGES, PARAMS)
    assert caught.value.status == 502


def test_an_error_event_inside_a_sagemaker_stream_ends_it_as_a_model_error(
    vllm: VllmServer, sagemaker: SageMakerLLM
) -> None:
    # Given vLLM failing after two tokens: its error event arrives inside the 200 stream
    vllm.responder = fixed(ANSWER)
    vllm.queue(VllmFault.stream_error(2, "EngineDeadError: the engine died"))
    stream = sagemaker.stream_complete("q", PARAMS, stall_timeout_s=STALL_S)

    # When reading it, Then the two tokens come, then the model's error, not a cut answer
    pieces: list[str] = []
    with pytest.raises(ModelError, match="EngineDeadError") as caught:
        pieces.extend(stream)
    assert "".join(pieces) == " ".join(ANSWER.split()[:2])
    assert caught.value.status == 502


# --------------------------------------------------------------------------- local mode


def test_local_mode_answers_buffered_and_streamed_through_vllm() -> None:
    """LLM_URL + LLM_API=openai: the local server in front of the vLLM fake, over HTTP."""
    with VllmServer(fixed(ANSWER), token_delay_s=0.005) as vllm:
        env = {
            "LLM_URL": vllm.url,
            "LLM_API": "openai",
            "SELF_QUERY_ENABLED": "false",
            "EXPANSION_N": "1",
        }
        llm = llm_from_settings(Settings.from_env(env))
        assert isinstance(llm, HttpLLM)
        world = fake_world(llm=llm, env=env)
        request = {"query": "Does DPO need a reward model?"}
        with (
            LocalServer(local_app(world.deps)) as server,
            httpx.Client(base_url=server.url, timeout=60) as http,
        ):
            buffered = http.post("/rag", json=request).json()
            with http.stream("POST", "/rag", json={**request, "stream": True}) as response:
                assert response.status_code == 200
                events = [e for e in sse_events(response) if e[0]]

        # Then both answers are the model's text, the streamed one token by token
        assert buffered["answer"] == ANSWER
        tokens = [data["text"] for name, data in events if name == "token"]
        assert len(tokens) > 1 and "".join(tokens) == ANSWER
        assert events[-1][0] == "done" and events[-1][1]["answer"] == ANSWER
        # And vLLM got OpenAI completions (the default model is TwinLlama, alpaca) naming it
        generations = [r for r in vllm.requests if r.path == "/v1/completions"]
        assert len(generations) == 2
        assert all(r.body["model"] == MODEL_ID for r in generations)
        assert [r.body.get("stream", False) for r in generations] == [False, True]
