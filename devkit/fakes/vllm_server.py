"""A vLLM-protocol HTTP server on 127.0.0.1 for tests and local runs: what `vllm serve` answers
(its OpenAI-compatible server) and what AWS's vLLM container adds for SageMaker.

Routes, as vLLM serves them:
- `POST /v1/completions`, `POST /v1/chat/completions` (OpenAI's bodies; vLLM's extra fields).
- `POST /invocations`: SageMaker's route; vLLM tries ChatCompletionRequest, then CompletionRequest,
  on the body and answers with the first that validates, else 400 "Cannot find suitable handler"
  (vllm `vllm/entrypoints/sagemaker/routes.py`). `GET|POST /ping` and `GET /health`: 200 once
  the engine is up (the same routes file: ping calls health).
- SageMaker runtime's `/endpoints/{name}/invocations[-response-stream]` in front of /invocations,
  with SageMaker's ModelError envelope for a container error and PayloadPart stream events
  (reused from `devkit.fakes.tgi_server`).

Answers, as vLLM builds them (vllm `entrypoints/openai/*/protocol.py`):
- the stop string is not in the text (`include_stop_str_in_output` defaults to false), and
  `finish_reason` is "stop" or "length", with `stop_reason` the matched string;
- structured output comes from `response_format` `json_schema` (or `structured_outputs.json`);
  fields vLLM does not know, such as the removed `guided_json`, are ignored (it only logs them),
  so a client that still sends them gets free text;
- errors are `{"error": {"message", "type", "param", "code"}}` with `code` the HTTP status
  (vLLM's ErrorResponse since 0.10; before it the same fields flat with `"object": "error"`);
  a request whose prompt plus max_tokens exceeds max_model_len is a 400 BadRequestError, an
  unknown model a 404 NotFoundError, a malformed body a 400;
- streams (`stream: true`) are `data: {chunk}` events, chat starting with a role-only delta and
  ending with an empty delta carrying finish_reason, an optional usage chunk
  (`stream_options.include_usage`), then `data: [DONE]`; an error during generation is one
  `data: {"error": ...}` event followed by `data: [DONE]`.

    with VllmServer(responder=fixed("hi")) as server:
        HttpLLM(server.url, api="openai", model=server.model_id, ...)

As a process: `python -m devkit.fakes.vllm_server --port 8081`.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from devkit.fakes.loopback import TrackedHandler
from devkit.fakes.tgi_server import (
    DEFAULT_ANSWER,
    MODEL_ID,
    GenerationRequest,
    LlmHandler,
    LlmServer,
    Responder,
    _as_sagemaker_model_error,
    _json_reply,
    _Reply,
    _tokens,
    _write_chunk,
    fixed,
    json_or,
)

MAX_MODEL_LEN = 4096
"""The fake's `--max-model-len` (the shipped twin-llama-3.1-8b-vllm config's)."""
DEFAULT_MAX_TOKENS = 16
"""vLLM's CompletionRequest default `max_tokens` (chat's default is the rest of the context)."""
ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema", "structural_tag")


def error_body(status: int, message: str, *, param: str | None = None) -> dict[str, Any]:
    """vLLM's ErrorResponse (ErrorInfo nested under `error`, `code` the HTTP status)."""
    kind = ERROR_TYPES.get(status, "InternalServerError" if status >= 500 else "BadRequestError")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


@dataclass(frozen=True)
class VllmFault:
    """Misbehave on one request: an error status with vLLM's body, or an error event after
    `after_tokens` streamed tokens."""

    status: int = 0
    message: str = ""
    after_tokens: int | None = None

    @classmethod
    def http_status(cls, status: int, message: str = "fake engine error") -> VllmFault:
        return cls(status=status, message=message)

    @classmethod
    def stream_error(cls, after_tokens: int, message: str = "fake engine error") -> VllmFault:
        return cls(status=500, message=message, after_tokens=after_tokens)


class _Invalid(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


class VllmServer(LlmServer[VllmFault]):
    """The fake, in a background thread; a context manager."""

    thread_name = "vllm-fake"

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        model_id: str = MODEL_ID,
        max_model_len: int = MAX_MODEL_LEN,
        token_delay_s: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(
            responder, model_id=model_id, token_delay_s=token_delay_s, host=host, port=port
        )
        self.max_model_len = max_model_len

    def handler_class(self) -> type[TrackedHandler]:
        return _handler_for(self)


# --------------------------------------------------------------------------- requests


def _route_kind(route: str, body: Any) -> str:
    """chat | completion, as vLLM routes it; /invocations tries chat first (routes.py)."""
    if route == "/v1/chat/completions":
        return "chat"
    if route == "/v1/completions":
        return "completion"
    if isinstance(body, dict) and isinstance(body.get("messages"), list):
        return "chat"
    if isinstance(body, dict) and "prompt" in body:
        return "completion"
    raise _Invalid(
        400,
        "Cannot find suitable handler for request. Expected one of: "
        "['ChatCompletionRequest', 'CompletionRequest']",
    )


def _parse(server: VllmServer, kind: str, body: dict[str, Any]) -> GenerationRequest:
    """The checks vLLM's request models and serving layer make, as 400/404 errors."""
    model = body.get("model")
    if model is not None and model != server.model_id:
        raise _Invalid(404, f"The model `{model}` does not exist.", "model")
    if kind == "chat":
        messages = body["messages"]
        if not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
        ):
            raise _Invalid(400, "messages: each message needs a role", "messages")
        prompt = "\n".join(str(m.get("content") or "") for m in messages)
    else:
        given = body.get("prompt")
        if not isinstance(given, str) or not given:
            raise _Invalid(400, "Either prompt or prompt_embeds must be provided.", "prompt")
        prompt = given
    temperature, top_p = body.get("temperature"), body.get("top_p")
    if temperature is not None and not (isinstance(temperature, (int, float)) and temperature >= 0):
        raise _Invalid(400, "temperature must be non-negative", "temperature")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise _Invalid(400, "top_p must be in (0, 1]", "top_p")
    if body.get("stream_options") and not body.get("stream"):
        raise _Invalid(400, "Stream options can only be defined when `stream=True`.")
    prompt_tokens = len(_tokens(prompt))
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS if kind == "completion" else None
    if not (max_tokens is None or (isinstance(max_tokens, int) and max_tokens >= 1)):
        raise _Invalid(400, "max_tokens must be at least 1", "max_tokens")
    if prompt_tokens + (max_tokens or 0) > server.max_model_len:
        raise _Invalid(
            400,
            f"This model's maximum context length is {server.max_model_len} tokens. However, "
            f"you requested {prompt_tokens + (max_tokens or 0)} tokens ({prompt_tokens} in "
            f"the messages, {max_tokens} in the completion). Please reduce the length of the "
            "messages or completion.",
        )
    stop = body.get("stop") or []
    return GenerationRequest(
        kind="chat" if kind == "chat" else "completion",
        prompt=prompt,
        body=body,
        schema=_schema(body),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        max_new_tokens=max_tokens,
    )


def _schema(body: Mapping[str, Any]) -> Any:
    """The JSON schema vLLM would enforce: response_format json_schema or structured_outputs."""
    response_format = body.get("response_format")
    if response_format is not None:
        if (
            not isinstance(response_format, dict)
            or response_format.get("type") not in RESPONSE_FORMAT_TYPES
        ):
            raise _Invalid(400, "response_format: unknown type", "response_format")
        if response_format["type"] == "json_schema":
            json_schema = response_format.get("json_schema")
            if not isinstance(json_schema, dict) or not isinstance(json_schema.get("name"), str):
                raise _Invalid(400, "response_format.json_schema.name is required")
            return json_schema.get("schema")
    structured = body.get("structured_outputs")
    if isinstance(structured, dict) and structured.get("json") is not None:
        return structured["json"]
    return None


def _limit(text: str, request: GenerationRequest) -> tuple[str, str, str | None]:
    """(text, finish_reason, stop_reason): the stop string is cut out, as vLLM does by default."""
    finish, stop_reason = "stop", None
    cut = min(((at, s) for s in request.stop if s and (at := text.find(s)) >= 0), default=None)
    if cut is not None:
        text, stop_reason = text[: cut[0]], cut[1]
    words = list(re.finditer(r"\S+", text))
    limit = request.max_new_tokens
    if limit is not None and len(words) > limit:
        text, finish, stop_reason = text[: words[limit - 1].end()], "length", None
    return text, finish, stop_reason


# --------------------------------------------------------------------------- answers


def _answer(server: VllmServer, kind: str, request: GenerationRequest) -> dict[str, Any]:
    text, finish, stop_reason = _limit(server.responder(request), request)
    prompt_tokens, completion_tokens = len(_tokens(request.prompt)), len(_tokens(text))
    common = _common(server, kind)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if kind == "chat":
        message = {"role": "assistant", "content": text, "tool_calls": []}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": stop_reason,
        }
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": stop_reason,
        }
    return {**common, "choices": [choice], "usage": usage}


def _common(server: VllmServer, kind: str, *, chunk: bool = False) -> dict[str, Any]:
    prefix, obj = ("chatcmpl", "chat.completion") if kind == "chat" else ("cmpl", "text_completion")
    return {
        "id": f"{prefix}-fake{server._next_id()}",
        "object": obj + (".chunk" if chunk and kind == "chat" else ""),
        "created": int(time.time()),
        "model": server.model_id,
    }


def stream_events(server: VllmServer, kind: str, request: GenerationRequest) -> list[Any]:
    """The stream's events in order: chunk dicts, then the `[DONE]` sentinel (a str)."""
    text, finish, stop_reason = _limit(server.responder(request), request)
    pieces = re.findall(r"\s*\S+", text)
    common = _common(server, kind, chunk=True)
    events: list[Any] = []

    def choice(piece: str, reason: str | None) -> dict[str, Any]:
        done = {"finish_reason": reason, "stop_reason": stop_reason if reason else None}
        if kind == "chat":
            return {"index": 0, "delta": {"content": piece}, "logprobs": None, **done}
        return {"index": 0, "text": piece, "logprobs": None, **done}

    if kind == "chat":  # vLLM's first chat chunk carries the role only
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
        events.append({**common, "choices": [{**first, "finish_reason": None}]})
    events.extend({**common, "choices": [choice(p, None)]} for p in pieces)
    events.append({**common, "choices": [choice("", finish)]})
    if (request.body.get("stream_options") or {}).get("include_usage"):
        prompt_tokens = len(_tokens(request.prompt))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }
        events.append({**common, "choices": [], "usage": usage})
    events.append("[DONE]")
    return events


# --------------------------------------------------------------------------- HTTP


def _handler_for(server: VllmServer) -> type[LlmHandler]:  # noqa: C901 - counts its handler class's methods
    class Handler(LlmHandler):
        fake = server

        def do_POST(self) -> None:
            _, body = self._read_body()
            sagemaker = self.path.startswith("/endpoints/")
            if self.path == "/ping":
                self._send(_Reply(200, b"", content_type="text/plain"))
                return
            route = "/invocations" if sagemaker else self.path
            if route not in ("/invocations", "/v1/completions", "/v1/chat/completions"):
                self._send(_json_reply(404, {"detail": "Not Found"}))
                return
            try:
                if not isinstance(body, dict):
                    raise _Invalid(400, "JSON decode error: the body is not a JSON object")
                kind = _route_kind(route, body)
                request = _parse(server, kind, body)
            except _Invalid as exc:
                self._error(exc.status, exc.message, exc.param, sagemaker)
                return
            fault = server._next_fault()
            if fault is not None and fault.after_tokens is None:
                self._error(fault.status, fault.message, None, sagemaker)
                return
            if body.get("stream") is True:
                self._stream(kind, request, fault, sagemaker)
            else:
                self._send(_json_reply(200, _answer(server, kind, request)))

        def _error(self, status: int, message: str, param: str | None, sagemaker: bool) -> None:
            reply = _json_reply(status, error_body(status, message, param=param))
            self._send(_as_sagemaker_model_error(reply) if sagemaker else reply)

        def _stream(
            self,
            kind: str,
            request: GenerationRequest,
            fault: VllmFault | None,
            sagemaker: bool,
        ) -> None:
            events = stream_events(server, kind, request)
            if fault is not None and fault.after_tokens is not None:
                # an engine error after some tokens: one error event, then [DONE]
                kept = 1 + fault.after_tokens if kind == "chat" else fault.after_tokens
                events = [*events[:kept], error_body(fault.status, fault.message), "[DONE]"]
            self._start_stream(sagemaker)
            try:
                for event in events:
                    data = event if isinstance(event, str) else json.dumps(event)
                    server.sleep(server.token_delay_s)
                    self._write_event(f"data: {data}\n\n".encode(), sagemaker)
                _write_chunk(self, b"")
            except (BrokenPipeError, ConnectionResetError):
                self._stream_ended_early()

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake vLLM (OpenAI-compatible) server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--answer", default=DEFAULT_ANSWER, help="text of every answer")
    parser.add_argument("--model", default=MODEL_ID, help="the served model name")
    args = parser.parse_args(argv)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with VllmServer(
        json_or(fixed(args.answer)), model_id=args.model, host=args.host, port=args.port
    ) as server:
        print(f"fake vLLM listening on {server.url}", flush=True)
        done.wait()


if __name__ == "__main__":
    main()
