"""Streamed generation parsing: SSE framing, TGI / OpenAI stream events, stop sequences, and
SageMaker's InvokeEndpointWithResponseStream read through botocore's own event-stream parser.

Sources: SSE framing https://html.spec.whatwg.org/multipage/server-sent-events.html; TGI 3.3.6
StreamResponse / ErrorResponse (docs/contracts/tgi-openapi.json, `/generate_stream`);
SageMaker runtime InvokeEndpointWithResponseStream: `PayloadPart.Bytes` parts of the container's
stream, `ModelStreamError` / `InternalStreamFailure` error events
(https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpointWithResponseStream.html),
framed as application/vnd.amazon.eventstream messages.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from devkit.fakes.tgi_server import Fault, TgiServer, fixed, model_stream_error, payload_part
from rag.adapters.llm.sagemaker import SageMakerLLM
from rag.adapters.llm.stream import SseDecoder, TextStream
from rag.domain.errors import BadRequest, ModelError, UpstreamTimeout
from rag.domain.ports import GenerationParams
from rag.domain.stops import StopFilter

PARAMS = GenerationParams(max_new_tokens=64, temperature=0.0, top_p=1.0, stop=("### Instruction:",))
UNICODE_ANSWER = "Z\u00fcrich caf\u00e9 \u2014 na\u00efve \u2713 \u65e5\u672c\u8a9e \U0001f642"


def test_an_event_split_anywhere_even_inside_a_utf8_character_is_reassembled() -> None:
    payload = 'data:{"token":{"text":"日本"}}\n\n'.encode()
    for cut in range(1, len(payload)):
        decoder = SseDecoder()
        events = decoder.feed(payload[:cut]) + decoder.feed(payload[cut:])
        assert events == ['{"token":{"text":"日本"}}']


def test_sse_comments_crlf_and_multi_line_data_follow_the_spec() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b": keep-alive\r\n\r\nevent: x\r\ndata: a\r\ndata: b\r\n\r\n") == ["a\nb"]


@pytest.mark.parametrize(
    "pieces",
    [
        ["Short answer.", " ###", " Instruction:", " leaked"],
        ["Short answer. #", "## Instr", "uction:"],
        ["Short answer. ### Instruction: leaked"],
    ],
)
def test_a_stop_sequence_never_passes_the_filter_however_it_is_split(pieces: list[str]) -> None:
    stop = StopFilter(("### Instruction:", "### Response:"))
    out = "".join(stop.feed(p) for p in pieces) + stop.flush()
    assert out == "Short answer. "
    assert stop.stopped


def test_text_that_only_looks_like_a_stop_prefix_is_released_at_the_end() -> None:
    stop = StopFilter(("### Instruction:",))
    held = stop.feed("a list: #")
    assert held == "a list: "
    assert held + stop.feed("## notes") + stop.flush() == "a list: ### notes"
    assert not stop.stopped


@pytest.fixture
def sagemaker(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TgiServer, SageMakerLLM]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with TgiServer(fixed(UNICODE_ANSWER)) as tgi:
        llm = SageMakerLLM(
            "ep",
            "ep-ic",
            connect_timeout_s=1,
            read_timeout_s=5,
            endpoint_url=tgi.url,
            region_name="eu-west-1",
        )
        yield tgi, llm


def test_sagemaker_payload_parts_split_mid_character_give_back_the_exact_text(
    sagemaker: tuple[TgiServer, SageMakerLLM],
) -> None:
    # The fake cuts the container's SSE bytes into 7-byte PayloadParts, so parts split lines
    # and multi-byte characters; botocore decodes the binary frames.
    tgi, llm = sagemaker
    stream = llm.stream_complete("q", PARAMS, stall_timeout_s=5)
    text = "".join(stream)
    generation = stream.result()

    assert text == UNICODE_ANSWER
    assert generation.finish_reason == "eos_token"
    assert generation.completion_tokens == len(UNICODE_ANSWER.split())
    request = tgi.requests[-1]
    assert request.path == "/endpoints/ep/invocations-response-stream"
    assert request.headers["X-Amzn-SageMaker-Inference-Component"] == "ep-ic"
    assert request.body["stream"] is True


def test_sagemaker_chat_chunks_end_with_done(sagemaker: tuple[TgiServer, SageMakerLLM]) -> None:
    _, llm = sagemaker
    stream = llm.stream_chat([{"role": "user", "content": "q"}], PARAMS, stall_timeout_s=5)
    assert "".join(stream) == UNICODE_ANSWER
    assert stream.result().finish_reason == "stop"


def test_a_model_stream_error_event_is_a_model_error(
    sagemaker: tuple[TgiServer, SageMakerLLM],
) -> None:
    tgi, llm = sagemaker
    tgi.queue(Fault.stream_error(2, "CUDA out of memory"))
    stream = llm.stream_complete("q", PARAMS, stall_timeout_s=5)
    got: list[str] = []
    with pytest.raises(ModelError) as raised:
        got.extend(stream)
    assert len(got) == 2
    assert "CUDA out of memory" in raised.value.message


def test_a_silent_sagemaker_stream_is_a_stall(sagemaker: tuple[TgiServer, SageMakerLLM]) -> None:
    tgi, llm = sagemaker
    tgi.queue(Fault.stream_stall(1, seconds=30))
    with pytest.raises(UpstreamTimeout) as raised:
        list(llm.stream_complete("q", PARAMS, stall_timeout_s=0.5))
    assert raised.value.code == "model_stalled"


def test_the_hand_built_frames_decode_with_botocores_parser() -> None:
    # The fake's frames, checked against botocore's own decoder (CRCs, headers, payload).
    from botocore.eventstream import EventStreamBuffer

    buffer = EventStreamBuffer()
    buffer.add_data(payload_part("é".encode()[:1]) + model_stream_error("boom"))
    first, second = list(buffer)
    # botocore-stubs type EventStreamMessage.headers as int; botocore decodes them to a dict.
    assert first.headers[":event-type"] == "PayloadPart"  # type: ignore[index]
    assert first.payload == "é".encode()[:1]
    assert second.headers[":exception-type"] == "ModelStreamError"  # type: ignore[index]
    assert json.loads(second.payload)["Message"] == "boom"


@pytest.mark.parametrize(
    "event",
    [
        # vLLM's ErrorResponse since 0.10: ErrorInfo nested under `error`, `code` the status
        {
            "error": {
                "message": "prompt too long",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
        },
        # before 0.10 the same fields flat, `"object": "error"`
        {
            "object": "error",
            "message": "prompt too long",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        },
    ],
)
def test_a_vllm_error_event_keeps_its_status(event: dict[str, Any]) -> None:
    """vLLM streams an error as one `data: {error}` event whose code is the HTTP status it would
    have answered (vllm entrypoints/openai/engine/protocol.py ErrorResponse; its serving layer's
    create_streaming_error_response)."""
    stream = TextStream(
        "completion", iter([f"data: {json.dumps(event)}\n\n".encode()]), lambda: None
    )
    with pytest.raises(BadRequest, match="prompt too long"):
        list(stream)


def test_a_vllm_engine_error_event_is_a_model_error() -> None:
    event = {"error": {"message": "EngineDeadError", "type": "InternalServerError", "code": 500}}
    stream = TextStream(
        "chat", iter([f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n".encode()]), lambda: None
    )
    with pytest.raises(ModelError, match="EngineDeadError"):
        list(stream)
