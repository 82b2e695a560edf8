"""Streamed generation, protocol side: server-sent events from TGI or an OpenAI-compatible server
(directly, or inside SageMaker's response-stream payload parts), turned into text pieces and a
final `Generation`; and the stop-sequence filter that keeps a stop sequence out of the text even
when the model produces it across several tokens.

Pure functions and small classes on bytes and dicts: `rag.adapters.llm.http` feeds them from
urllib3, `rag.adapters.llm.sagemaker` from botocore.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from rag.adapters.llm.protocol import error_for_status  # one mapping, buffered and streamed
from rag.domain.errors import ApiError, ModelError
from rag.domain.ports import Generation

StreamKind = Literal["tgi", "chat", "completion"]
"""`tgi`: TGI /generate_stream StreamResponse; `chat`: ChatCompletionChunk; `completion`: Chunk."""

DONE_SENTINEL = "[DONE]"
"""OpenAI-style streams end with `data: [DONE]`."""
TGI_ERROR_STATUS = {
    "validation": 422,
    "generation": 424,
    "overloaded": 429,
    "incomplete_generation": 500,
    "unhealthy": 503,
}
"""TGI's `error_type` -> the HTTP status its OpenAPI spec gives the same ErrorResponse."""


class SseDecoder:
    """Server-sent events from a byte stream cut anywhere (a chunk may end inside a line, or
    inside a multi-byte UTF-8 character): `feed` returns the `data` of each complete event.

    Lines are split on bytes and decoded only when complete, so a character split across two
    chunks (or two SageMaker payload parts) is reassembled before decoding.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        events: list[str] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return events
            raw, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            elif line.startswith("data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(" ") else value)
            # comments (":") and other fields (event, id, retry) carry nothing we use

    def close(self) -> list[str]:
        """An event not followed by a blank line when the stream ended (TGI always sends one)."""
        events = self.feed(b"\n\n") if self._buffer or self._data else []
        return events


@dataclass
class StreamState:
    """What the stream's events said about the generation so far."""

    completion_tokens: int = 0
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    reported_completion_tokens: int | None = None
    finished: bool = False


def pieces_from_events(
    kind: StreamKind, events: Iterable[str], state: StreamState
) -> Iterator[str]:
    """The text pieces of each event's JSON; raises the model's error event as an ApiError."""
    for data in events:
        if data.strip() == DONE_SENTINEL:
            state.finished = True
            continue
        try:
            payload = json.loads(data)
        except ValueError:
            raise ModelError(
                "The model's stream sent an event that is not JSON.", code="model_bad_response"
            ) from None
        if not isinstance(payload, dict):
            raise ModelError(
                "The model's stream sent an unexpected event.", code="model_bad_response"
            )
        if "error" in payload or payload.get("object") == "error":
            raise stream_error(payload)
        text = _piece(kind, payload, state)
        if text:
            yield text


def stream_error(payload: dict[str, Any]) -> ApiError:
    """A TGI ErrorResponse, or an OpenAI-style error received inside the stream: vLLM's
    `{"error": {"message", "type", "param", "code"}}` (before 0.10 the same fields flat, with
    `"object": "error"`), whose `code` is the HTTP status it would have answered."""
    error = payload.get("error")
    kind = payload.get("error_type")
    openai = error if isinstance(error, dict) else payload if "error" not in payload else {}
    if openai:
        kind = openai.get("type")
    code = openai.get("code") if openai else None
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        status = code
    else:
        status = TGI_ERROR_STATUS.get(kind if isinstance(kind, str) else "", 424)
    return error_for_status(status, json.dumps(payload), where="the model's stream")


def _piece(kind: StreamKind, payload: dict[str, Any], state: StreamState) -> str:
    if kind == "tgi":
        return _tgi_piece(payload, state)
    choices = payload.get("choices")
    usage = payload.get("usage")
    if isinstance(usage, dict):  # vLLM / TGI send it on the last chunk when asked
        state.prompt_tokens = _int(usage.get("prompt_tokens"))
        state.reported_completion_tokens = _int(usage.get("completion_tokens"))
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    finish = choice.get("finish_reason")
    if isinstance(finish, str):
        state.finish_reason = finish
        state.finished = True
    if kind == "chat":
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
    else:
        text = choice.get("text")
    if not isinstance(text, str) or not text:
        return ""
    state.completion_tokens += 1
    return text


def _tgi_piece(payload: dict[str, Any], state: StreamState) -> str:
    token = payload.get("token")
    details = payload.get("details")
    if isinstance(details, dict):  # the last event: TGI's StreamDetails
        state.finished = True
        state.finish_reason = details.get("finish_reason")
        state.reported_completion_tokens = _int(details.get("generated_tokens"))
        state.prompt_tokens = _int(details.get("input_length"))
    if not isinstance(token, dict) or token.get("special"):
        return ""  # special tokens (</s>, <|eot_id|>) are not in TGI's generated_text either
    state.completion_tokens += 1
    text = token.get("text")
    return text if isinstance(text, str) else ""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def final_generation(text: str, state: StreamState) -> Generation:
    return Generation(
        text=text,
        prompt_tokens=state.prompt_tokens,
        completion_tokens=(
            state.reported_completion_tokens
            if state.reported_completion_tokens is not None
            else state.completion_tokens
        ),
        finish_reason=state.finish_reason,
    )


class TextStream:
    """One streamed generation: iterate for the model's raw text pieces (stop sequences are the
    caller's `StopFilter`'s job), then read `result()`. `close()` ends the upstream call (and is
    called when iteration ends, however it ends).

    `chunks` yields the response body as it arrives and raises ApiErrors for transport failures
    (each adapter maps its own); a stream that ends before the model's last event is an error,
    never a silently cut answer.
    """

    def __init__(
        self, kind: StreamKind, chunks: Iterator[bytes], close: Callable[[], None]
    ) -> None:
        self.kind: StreamKind = kind
        self.state = StreamState()
        self._chunks = chunks
        self._close = close
        self._closed = False
        self._text: list[str] = []

    def __iter__(self) -> Iterator[str]:
        decoder = SseDecoder()
        try:
            for chunk in self._chunks:
                for piece in pieces_from_events(self.kind, decoder.feed(chunk), self.state):
                    self._text.append(piece)
                    yield piece
            for piece in pieces_from_events(self.kind, decoder.close(), self.state):
                self._text.append(piece)
                yield piece
            if not self.state.finished:
                raise ModelError(
                    "The model's stream ended before the generation finished.",
                    code="model_connection_lost",
                )
        finally:
            self.close()

    def result(self) -> Generation:
        return final_generation("".join(self._text), self.state)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()
