"""The OpenAI chat-completions protocol over the same pipeline as `/rag`.

Request (https://platform.openai.com/docs/api-reference/chat/create): the last message must be
the user's and is the RAG query; earlier user and assistant messages are the conversation
(placed by rag.domain.prompt's history rule); system and developer messages are not placed, since the
twin's own instruction governs the prompt. `temperature`, `top_p`, `max_tokens` /
`max_completion_tokens` (clamped to the model config's limit), `stop` (up to 4), `stream`,
`stream_options.include_usage` and `user` are honoured; what the twin cannot do (tools and
functions, n > 1, non-text content or output, JSON response formats, logprobs) is a 400 that
names the parameter; any other parameter is ignored, as chat UIs send many. The extension `rag`
object takes `k`, `author`, `expand` (as `/rag`) and `citations` (append a Sources block).

Response: `chat.completion` (buffered) or `chat.completion.chunk` events then `[DONE]`
(streamed), plus two extra top-level fields OpenAI clients ignore: `sources` (as `/rag`'s) and
`trace_id`. Errors: `{"error": {"message", "type", "param", "code"}}`, OpenAI's shape.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rag.domain.errors import ApiError, BadRequest, NotFound
from rag.domain.models import MAX_K, RagRequest, describe_errors, parse_request
from rag.domain.outcomes import AnswerOutcome, Conversation, DoneEvent, RetrievalEvent, StreamEvent
from rag.domain.ports import Chunk
from rag.domain.prompt import Turn
from web.responses import source
from web.sse import INTERNAL_ERROR

MODEL_ID = "llm-twin"
"""The one model `/v1/models` lists and `model` must name."""
OWNER = "llm-twin"
MAX_STOP = 4
"""OpenAI's own limit on stop sequences."""
MAX_MESSAGES = 100
MAX_USER_CHARS = 256
DONE = b"data: [DONE]\n\n"
ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_error"}
"""OpenAI's error types by status; 5xx are `server_error`, other 4xx `invalid_request_error`."""

_LENIENT = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False, frozen=True)
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class OpenAIError(ApiError):
    """An ApiError that also names the request parameter it is about."""

    def __init__(self, error: ApiError, param: str | None) -> None:
        super().__init__(error.message, code=error.code, retry_after_s=error.retry_after_s)
        self.status = error.status
        self.param = param


def error_body(error: ApiError) -> dict[str, Any]:
    status = error.status
    kind = "server_error" if status >= 500 else ERROR_TYPES.get(status, "invalid_request_error")
    return {
        "error": {
            "message": error.message,
            "type": kind,
            "param": error.param if isinstance(error, OpenAIError) else None,
            "code": error.code,
        }
    }


def unsupported(param: str, what: str) -> OpenAIError:
    return OpenAIError(BadRequest(f"{param}: {what}", code="unsupported_parameter"), param)


# --- request ----------------------------------------------------------------------------------


class ContentPart(BaseModel):
    model_config = _LENIENT
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = _LENIENT
    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[Any] | None = None


class StreamOptions(BaseModel):
    model_config = _LENIENT
    include_usage: bool = False


class RagOptions(BaseModel):
    """The extension object: `/rag`'s retrieval options and the citation block."""

    model_config = _STRICT
    k: int | None = Field(default=None, ge=1, le=MAX_K)
    author: str | None = None
    expand: bool | None = None
    citations: bool = False


class ChatRequest(BaseModel):
    model_config = _LENIENT
    model: str
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    user: str | None = Field(default=None, max_length=MAX_USER_CHARS)
    rag: RagOptions | None = None
    # Asked-for behaviour the twin does not have: refused by name (`refuse_unsupported`).
    n: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    modalities: list[str] | None = None
    audio: Any = None


@dataclass(frozen=True)
class ChatCall:
    """A parsed chat request: the pipeline's input and how to write the answer."""

    rag: RagRequest
    conversation: Conversation
    stream: bool
    include_usage: bool
    citations: bool


def parse_chat(body: Any, *, max_new_tokens_limit: int) -> ChatCall:
    if not isinstance(body, dict):
        raise OpenAIError(BadRequest("body: must be a JSON object"), None)
    try:
        chat = ChatRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]["loc"]
        raise OpenAIError(BadRequest(describe_errors(exc)), _param(first)) from None
    refuse_unsupported(chat)
    if chat.model != MODEL_ID:
        raise _unknown_model(chat.model)
    *earlier, last = chat.messages
    if last.role != "user":
        raise OpenAIError(BadRequest("messages: the last message must be the user's"), "messages")
    history = tuple(
        Turn(role="user" if m.role == "user" else "assistant", content=_text(m))
        for m in earlier
        if m.role in ("user", "assistant") and _text(m)
    )
    options = chat.rag or RagOptions()
    asked_tokens = chat.max_completion_tokens or chat.max_tokens
    generation = {
        key: value
        for key, value in (
            ("max_new_tokens", min(asked_tokens, max_new_tokens_limit) if asked_tokens else None),
            ("temperature", chat.temperature),
            ("top_p", chat.top_p),
        )
        if value is not None
    }
    rag_body: dict[str, Any] = {"query": _text(last), "generation": generation}
    for key in ("k", "author", "expand"):
        if getattr(options, key) is not None:
            rag_body[key] = getattr(options, key)
    try:
        req = parse_request(RagRequest, rag_body, max_new_tokens_limit=max_new_tokens_limit)
    except BadRequest as exc:
        param = "messages" if exc.message.startswith("query") else "rag"
        raise OpenAIError(exc, param) from None
    stop = [chat.stop] if isinstance(chat.stop, str) else list(chat.stop or ())
    if len(stop) > MAX_STOP or not all(stop):
        raise OpenAIError(BadRequest(f"stop: at most {MAX_STOP} non-empty strings"), "stop")
    return ChatCall(
        rag=req,
        conversation=Conversation(history=history, stop=tuple(stop), user=chat.user),
        stream=chat.stream,
        include_usage=bool(chat.stream_options and chat.stream_options.include_usage),
        citations=options.citations,
    )


def refuse_unsupported(chat: ChatRequest) -> None:  # noqa: C901 - one flat guard per refused OpenAI field, the list in one place
    if chat.n is not None and chat.n != 1:
        raise unsupported("n", "only one choice (n=1) is supported")
    for name in ("tools", "functions"):
        if getattr(chat, name):
            raise unsupported(name, "tool and function calling are not supported")
    for name in ("tool_choice", "function_call"):
        if getattr(chat, name) not in (None, "none"):
            raise unsupported(name, "tool and function calling are not supported")
    if chat.response_format and chat.response_format.get("type") != "text":
        raise unsupported("response_format", "only text responses are supported")
    if chat.logprobs or chat.top_logprobs:
        raise unsupported("logprobs", "log probabilities are not available")
    if chat.audio is not None or (chat.modalities and chat.modalities != ["text"]):
        raise unsupported("modalities", "only text output is supported")
    for i, message in enumerate(chat.messages):
        if message.role in ("tool", "function") or message.tool_calls:
            raise unsupported(f"messages[{i}]", "tool and function messages are not supported")
        for j, part in enumerate(message.content if isinstance(message.content, list) else ()):
            if part.type != "text":
                raise unsupported(
                    f"messages[{i}].content[{j}]", f"content type {part.type!r} is not supported"
                )


def _text(message: Message) -> str:
    if isinstance(message.content, list):
        return "\n".join(part.text or "" for part in message.content)
    return message.content or ""


def _param(loc: tuple[Any, ...]) -> str:
    head, *rest = loc or ("body",)
    name = str(head)
    for part in rest:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


# --- response ---------------------------------------------------------------------------------


def _model_object() -> dict[str, Any]:
    return {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": OWNER}


def models_body() -> dict[str, Any]:
    return {"object": "list", "data": [_model_object()]}


def model_body(model_id: str) -> dict[str, Any]:
    """`GET /models/{model}`: the one model, or OpenAI's 404 `model_not_found` naming it."""
    if model_id != MODEL_ID:
        raise _unknown_model(model_id)
    return _model_object()


def _unknown_model(model_id: str) -> OpenAIError:
    return OpenAIError(
        NotFound(f"model: unknown model {model_id!r}; use {MODEL_ID!r}", code="model_not_found"),
        "model",
    )


def citation_block(sources: list[Chunk]) -> str:
    """Markdown a chat UI shows under the answer; numbers match the prompt's source indexes."""
    if not sources:
        return ""
    lines = [
        f"{i}. {c.author_full_name or 'unknown'} ({c.platform or c.collection})"
        + (f": {c.link}" if c.link else "")
        for i, c in enumerate(sources, start=1)
    ]
    return "\n\nSources:\n" + "\n".join(lines)


def _usage(outcome: AnswerOutcome) -> dict[str, int]:
    prompt, completion = outcome.prompt_tokens or 0, outcome.completion_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish_reason(outcome: AnswerOutcome) -> Literal["stop", "length"]:
    return "length" if outcome.finish_reason == "length" else "stop"


def _extras(chunks: list[Chunk], trace_id: str) -> dict[str, Any]:
    return {"sources": [source(c).model_dump(mode="json") for c in chunks], "trace_id": trace_id}


def completion_body(outcome: AnswerOutcome, *, citations: bool) -> dict[str, Any]:
    answer = outcome.answer + (citation_block(outcome.sources) if citations else "")
    return {
        "id": f"chatcmpl-{outcome.trace_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL_ID,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": _finish_reason(outcome),
                "logprobs": None,
            }
        ],
        "usage": _usage(outcome),
        **_extras(outcome.sources, outcome.trace_id),
    }


def _data(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


class ChunkEncoder:
    """`chat.completion.chunk` events: the role (with `sources`) once retrieval is done, one
    per piece of text, the citation block, the finish reason, the usage chunk when asked
    (`choices` empty; the others carry `usage: null`), then `[DONE]`. A failure after the
    stream began is one `data: {"error": ...}` event, which the OpenAI SDKs raise."""

    def __init__(self, call: ChatCall) -> None:
        self.call = call
        self.id = "chatcmpl-pending"
        self.created = int(time.time())

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        payload: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": MODEL_ID,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        if self.call.include_usage:
            payload["usage"] = None
        return _data(payload)

    def event(self, item: StreamEvent) -> bytes:
        if isinstance(item, RetrievalEvent):
            retrieval = item.retrieval
            self.id = f"chatcmpl-{retrieval.trace_id}"
            extras = _extras(retrieval.chunks, retrieval.trace_id)
            return self._chunk({"role": "assistant", "content": ""}, **extras)
        if isinstance(item, DoneEvent):
            return self._done(item.outcome)
        return self._chunk({"content": item.text})

    def _done(self, outcome: AnswerOutcome) -> bytes:
        out = b""
        if self.call.citations and outcome.sources:
            out += self._chunk({"content": citation_block(outcome.sources)})
        out += self._chunk(
            {}, _finish_reason(outcome), **_extras(outcome.sources, outcome.trace_id)
        )
        if self.call.include_usage:
            out += _data(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": MODEL_ID,
                    "choices": [],
                    "usage": _usage(outcome),
                }
            )
        return out + DONE

    def error(self, exc: BaseException) -> bytes:
        if not isinstance(exc, ApiError):
            exc = ApiError(INTERNAL_ERROR["message"])
        return _data(error_body(exc))
