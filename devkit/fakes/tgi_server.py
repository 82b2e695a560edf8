"""A TGI-protocol HTTP server on 127.0.0.1 for tests and benchmarks.

It answers TGI 3.3.6's routes (`/generate`, `/`, `/invocations`, `/v1/chat/completions`,
`/v1/completions`, `/health`, `/ping`) and SageMaker runtime's `/endpoints/{name}/invocations`
(with SageMaker's error envelope), validates every request body against TGI's own OpenAPI spec
(422 ErrorResponse when invalid) and builds every response to validate against the spec too.
A test scripts it with a responder (the generated text per request), a delay per call, and faults.

    with TgiServer(responder=fixed("hi")) as server:
        HttpLLM(server.url, ...)

As a process: `python -m devkit.fakes.tgi_server --port 8080 --delay 0.2`.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import re
import signal
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from devkit.fakes.loopback import Faults, LoopbackServer, TrackedHandler

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = REPO_ROOT / "docs" / "contracts" / "tgi-openapi.json"
SPEC_URI = "urn:tgi-openapi"
MODEL_ID = "mlabonne/TwinLlama-3.1-8B-DPO"
SYSTEM_FINGERPRINT = "3.3.6-native"
MAX_STOP_SEQUENCES = 4
"""TGI's --max-stop-sequences default; it applies to chat requests as well."""
IDLE_CONNECTION_TIMEOUT_S = 5.0
"""A kept-alive connection with no request for this long is closed by the server."""
AWS_ACCOUNT = "123456789012"

ERROR_TYPES = {
    422: "validation",
    424: "generation",
    429: "overloaded",
    500: "incomplete_generation",
    503: "unhealthy",
}
"""TGI's `error_type` per status (its OpenAPI examples)."""

Flavor = Literal["tgi", "openai"]


# --------------------------------------------------------------------------- the spec


def spec_path() -> Path:
    """TGI's OpenAPI spec: $TGI_OPENAPI_SPEC, else the repository's copy in docs/contracts."""
    override = os.environ.get("TGI_OPENAPI_SPEC")
    path = Path(override) if override else SPEC_PATH
    if not path.is_file():
        raise FileNotFoundError(f"TGI OpenAPI spec not found at {path}")
    return path


def _nullable_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 `nullable: true` has no JSON Schema keyword: allow null explicitly."""
    if isinstance(node, list):
        return [_nullable_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _nullable_to_json_schema(value) for key, value in node.items()}
    if converted.pop("nullable", False) is True:
        return {"anyOf": [{"type": "null"}, converted]}
    return converted


_OPENAI_RESPONSE_FORMAT = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"enum": ["text", "json_object", "json_schema"]},
        "json_schema": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "schema": {}, "strict": {"type": "boolean"}},
        },
    },
}


class TgiSpec:
    """Validators for the spec's component schemas, `$ref`s resolved within the spec."""

    def __init__(self, document: Mapping[str, Any], flavor: Flavor = "tgi") -> None:
        document = _nullable_to_json_schema(copy.deepcopy(dict(document)))
        if flavor == "openai":
            # OpenAI-compatible servers (vLLM, Ollama) take OpenAI's response_format and a
            # string prompt; everything else is TGI's schema.
            schemas = document["components"]["schemas"]
            schemas["ChatRequest"]["properties"]["response_format"] = _OPENAI_RESPONSE_FORMAT
            schemas["Prompt"] = {
                "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
            }
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    def validator(self, name: str) -> jsonschema.protocols.Validator:
        if name not in self._validators:
            ref = {"$ref": f"{SPEC_URI}#/components/schemas/{name}"}
            self._validators[name] = jsonschema.Draft202012Validator(ref, registry=self._registry)
        return self._validators[name]

    def errors(self, name: str, instance: Any) -> list[str]:
        """Human-readable violations of schema `name` (empty when valid)."""
        found = sorted(self.validator(name).iter_errors(instance), key=lambda e: list(e.path))
        return [f"{'/'.join(map(str, e.path)) or '<body>'}: {e.message}" for e in found]

    def validate(self, name: str, instance: Any) -> None:
        self.validator(name).validate(instance)


@cache
def tgi_spec(flavor: Flavor = "tgi") -> TgiSpec:
    return TgiSpec(json.loads(spec_path().read_text()), flavor)


# --------------------------------------------------------------------------- requests


Kind = Literal["generate", "chat", "completion"]


@dataclass(frozen=True)
class GenerationRequest:
    """What a responder sees: one generation request, whatever route it came by."""

    kind: Kind
    prompt: str
    """`inputs`, the completion prompt, or the chat messages' contents joined by newlines."""
    body: Mapping[str, Any]
    schema: Any = None
    """JSON schema from the grammar / response_format, when one was given."""
    stop: tuple[str, ...] = ()
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    """Parsed JSON, or None when the body was empty or not JSON."""


Responder = Callable[[GenerationRequest], str]


def fixed(text: str) -> Responder:
    return lambda _request: text


def echo() -> Responder:
    return lambda request: request.prompt


def json_or(default: Responder) -> Responder:
    """A JSON object honouring the request's schema when it has one, else `default`."""

    def respond(request: GenerationRequest) -> str:
        if request.schema is not None:
            return json.dumps(instance_of(request.schema))
        return default(request)

    return respond


def instance_of(schema: Any) -> Any:  # noqa: C901 - one branch per JSON-schema keyword
    """A small value valid against a simple JSON schema (enough for structured-output prompts)."""
    if not isinstance(schema, dict):
        return {}
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return instance_of(schema[key][0])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        # Nullable: answer null, the model's "nothing found" (e.g. no author in a self-query).
        kind = "null" if "null" in kind else kind[0]
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: instance_of(sub) for name, sub in properties.items()}
    if kind == "array":
        return [instance_of(schema.get("items", {})) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    return None


DEFAULT_ANSWER = "This is the fake model's answer."


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """How to misbehave on one request. Build with the class methods."""

    kind: Literal[
        "status",
        "malformed",
        "wrong_shape",
        "close",
        "hang",
        "aws_error",
        "stream_error",
        "stream_drop",
        "stream_stall",
    ]
    status: int = 0
    after_tokens: int = 0
    message: str = ""
    seconds: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)
    aws_code: str = ""

    @classmethod
    def http_status(cls, status: int, message: str | None = None, **headers: str) -> Fault:
        """TGI's ErrorResponse with this status (422, 424, 429, 500, ...)."""
        text = message or f"fake {ERROR_TYPES.get(status, 'error')} error"
        return cls("status", status=status, message=text, headers=headers)

    @classmethod
    def malformed(cls) -> Fault:
        """200 with a body that is not JSON."""
        return cls("malformed")

    @classmethod
    def wrong_shape(cls) -> Fault:
        """200 with JSON that is not the route's response."""
        return cls("wrong_shape")

    @classmethod
    def close(cls) -> Fault:
        """Close the connection without answering."""
        return cls("close")

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        """Answer only after `seconds` (or at shutdown): longer than the client's read timeout."""
        return cls("hang", seconds=seconds)

    @classmethod
    def stream_error(
        cls, after_tokens: int, message: str = "Request failed during generation"
    ) -> Fault:
        """Streams only: TGI's ErrorResponse event (error_type generation) after some tokens."""
        return cls("stream_error", message=message, after_tokens=after_tokens)

    @classmethod
    def stream_drop(cls, after_tokens: int) -> Fault:
        """Streams only: the connection is closed mid-stream, no terminating chunk."""
        return cls("stream_drop", after_tokens=after_tokens)

    @classmethod
    def stream_stall(cls, after_tokens: int, seconds: float) -> Fault:
        """Streams only: nothing more for `seconds` (or until shutdown) after some tokens."""
        return cls("stream_stall", after_tokens=after_tokens, seconds=seconds)

    @classmethod
    def aws_error(cls, code: str, status: int, message: str) -> Fault:
        """A SageMaker runtime error (SageMaker routes only), e.g. ServiceUnavailable 503."""
        return cls("aws_error", status=status, message=message, aws_code=code)


# --------------------------------------------------------------------------- the server


F = TypeVar("F")


class LlmServer(LoopbackServer, Generic[F]):
    """What the TGI and vLLM fakes share on top of the loopback lifecycle: the responder, the
    recorded requests, the faults (type F) and what a test reads of streams."""

    def __init__(
        self,
        responder: Responder | None,
        *,
        model_id: str,
        token_delay_s: float,
        host: str,
        port: int,
    ) -> None:
        super().__init__(host=host, port=port)
        self.responder = responder or json_or(fixed(DEFAULT_ANSWER))
        self.model_id = model_id
        self.token_delay_s = token_delay_s
        """Pacing of streamed tokens: the wait before each one."""
        self.first_token_sent_s: list[float] = []
        """time.perf_counter() when each stream's first token was written."""
        self.streams_closed_early = 0
        """Streams whose client hung up before the last event."""
        self.faults: Faults[F] = Faults()
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def queue(self, *faults: F) -> None:
        """Misbehave on the next requests, one fault each, then answer normally again."""
        self.faults.queue(*faults)

    # -- used by the handler

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next_fault(self) -> F | None:
        return self.faults.next()

    def _next_id(self) -> int:
        return next(self._ids)

    def _stream_closed_early(self) -> None:
        with self._lock:
            self.streams_closed_early += 1


class TgiServer(LlmServer[Fault]):
    """The fake, running in a background thread; a context manager."""

    thread_name = "tgi-fake"

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        delay_s: float = 0.0,
        token_delay_s: float = 0.0,
        flavor: Flavor = "tgi",
        host: str = "127.0.0.1",
        port: int = 0,
        model_id: str = MODEL_ID,
    ) -> None:
        super().__init__(
            responder, model_id=model_id, token_delay_s=token_delay_s, host=host, port=port
        )
        self.delay_s = delay_s
        self.flavor: Flavor = flavor
        self.spec = tgi_spec(flavor)

    def handler_class(self) -> type[TrackedHandler]:
        return _handler_for(self)

    def set_fault(self, fault: Fault | None) -> None:
        """Misbehave on every request until cleared with None."""
        self.faults.set(fault)


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


def _json_reply(status: int, payload: Any, **headers: str) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), dict(headers))


def _tgi_error(status: int, message: str, **headers: str) -> _Reply:
    error = {"error": message, "error_type": ERROR_TYPES.get(status, "error")}
    return _json_reply(status, error, **headers)


class LlmHandler(TrackedHandler):
    """What the TGI and vLLM handlers share: health routes, recording, replies, stream writes."""

    timeout = IDLE_CONNECTION_TIMEOUT_S
    fake: LlmServer[Any]

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except ConnectionResetError:  # a client that ended a stream early hung up
            self.close_connection = True

    def do_GET(self) -> None:
        self.fake._record(RecordedRequest("GET", self.path, dict(self.headers), None))
        ok = self.path in ("/health", "/ping")
        self._send(_Reply(200 if ok else 404, b"", content_type="text/plain"))

    def _read_body(self) -> tuple[bytes, Any]:
        """(raw bytes, parsed JSON or None), the request recorded."""
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.fake._record(RecordedRequest("POST", self.path, dict(self.headers), body))
        return raw, body

    def _send(self, reply: _Reply) -> None:
        self.send_body(reply.status, reply.body, reply.content_type, reply.headers)

    def _start_stream(self, sagemaker: bool) -> None:
        self.send_response(200)
        content_type = "application/vnd.amazon.eventstream" if sagemaker else "text/event-stream"
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _write_event(self, data: bytes, sagemaker: bool) -> None:
        if sagemaker:  # one PayloadPart per few bytes: parts end anywhere, as SageMaker's may
            for at in range(0, len(data), STREAM_PART_BYTES):
                _write_chunk(self, payload_part(data[at : at + STREAM_PART_BYTES]))
        else:
            _write_chunk(self, data)

    def _stream_ended_early(self) -> None:
        self.fake._stream_closed_early()
        self.close_connection = True


def _handler_for(server: TgiServer) -> type[LlmHandler]:
    class Handler(LlmHandler):
        fake = server

        def do_POST(self) -> None:
            raw, body = self._read_body()
            sagemaker = self.path.startswith("/endpoints/") and self.path.endswith("/invocations")
            if _wants_stream(self.path, body):
                _stream(server, self, body)
                return
            reply = _answer(server, self.path, self.headers.get("Content-Type", ""), raw, sagemaker)
            if reply is None:
                self.close_connection = True  # Fault.close: hang up without a word
                return
            if sagemaker and reply.status >= 400 and "x-amzn-ErrorType" not in reply.headers:
                reply = _as_sagemaker_model_error(reply)
            self._send(reply)

    return Handler


def _answer(
    server: TgiServer, path: str, content_type: str, raw: bytes, sagemaker: bool
) -> _Reply | None:
    route = "/invocations" if sagemaker else path
    if route not in ("/", "/generate", "/invocations", "/v1/chat/completions", "/v1/completions"):
        return _Reply(404, b"", content_type="text/plain")
    if "application/json" not in content_type:
        return _Reply(
            415, b"Expected request with `Content-Type: application/json`", {}, "text/plain"
        )
    try:
        body = json.loads(raw)
    except ValueError:
        return _Reply(400, b"Failed to parse the request body as JSON", {}, "text/plain")

    schema_name = _request_schema(route, body)
    problems = server.spec.errors(schema_name, body) + _tgi_semantic_errors(body)
    if problems:
        return _tgi_error(422, "Input validation error: " + "; ".join(problems))

    fault = server._next_fault()
    server.sleep(server.delay_s)
    if fault is not None:
        return _fault_reply(server, fault, sagemaker)
    return _generate(server, route, schema_name, body)


def _request_schema(route: str, body: Any) -> str:
    if route == "/v1/chat/completions":
        return "ChatRequest"
    if route == "/v1/completions":
        return "CompletionRequest"
    if route in ("/generate", "/generate_stream"):
        return "GenerateRequest"
    if route == "/":
        return "CompatGenerateRequest"
    # /invocations: SagemakerRequest is a oneOf; route by its members' required fields.
    if isinstance(body, dict) and "messages" in body:
        return "ChatRequest"
    if isinstance(body, dict) and "prompt" in body:
        return "CompletionRequest"
    return "CompatGenerateRequest"


def _tgi_semantic_errors(body: Any) -> list[str]:
    """Checks TGI's router makes beyond its published schema (router/src/validation.rs)."""
    if not isinstance(body, dict):
        return []
    nested = body.get("parameters")
    params: dict[str, Any] = nested if isinstance(nested, dict) else body
    problems = []
    top_p = params.get("top_p")
    if isinstance(top_p, (int, float)) and not 0 < top_p < 1:
        problems.append("`top_p` must be > 0.0 and < 1.0")
    stop = params.get("stop")
    if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
        problems.append(f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences")
    return problems


def _fault_reply(server: TgiServer, fault: Fault, sagemaker: bool) -> _Reply | None:
    if fault.kind == "status":
        return _tgi_error(fault.status, fault.message, **fault.headers)
    if fault.kind == "malformed":
        return _Reply(200, b'{"generated_text": "cut off in the midd')
    if fault.kind == "wrong_shape":
        return _json_reply(200, {"unexpected": True})
    if fault.kind == "close":
        return None
    if fault.kind == "hang":
        server.sleep(fault.seconds)
        return _json_reply(200, {"generated_text": "too late"})
    if fault.kind == "aws_error" and sagemaker:
        return _aws_error(fault.aws_code, fault.status, fault.message)
    raise ValueError(f"fault {fault.kind} does not apply to this route")


def _aws_error(code: str, status: int, message: str, **fields: Any) -> _Reply:
    """SageMaker runtime's rest-json error: code in x-amzn-ErrorType, members in the body."""
    return _json_reply(status, {"message": message, **fields}, **{"x-amzn-ErrorType": code})


def _as_sagemaker_model_error(reply: _Reply) -> _Reply:
    """SageMaker wraps a container's error status into a 424 ModelError with the original."""
    original = reply.body.decode("utf-8", "replace")
    kind = "client" if reply.status < 500 else "server"
    message = (
        f'Received {kind} error ({reply.status}) from primary with message "{original}". '
        f"See the CloudWatch log group /aws/sagemaker/Endpoints in account {AWS_ACCOUNT}."
    )
    return _aws_error(
        "ModelError",
        424,
        message,
        OriginalStatusCode=reply.status,
        OriginalMessage=original,
        LogStreamArn=f"arn:aws:logs:eu-west-1:{AWS_ACCOUNT}:log-group:/aws/sagemaker/Endpoints",
    )


# --------------------------------------------------------------------------- generation


def _generate(server: TgiServer, route: str, schema_name: str, body: dict[str, Any]) -> _Reply:
    request = _generation_request(schema_name, body, server.flavor)
    text, finish = _limit(server.responder(request), request.stop, request.max_new_tokens)
    words = _tokens(text)
    if schema_name in ("GenerateRequest", "CompatGenerateRequest"):
        payload = _generate_response(request, words, text, finish)
        # compat_generate (`/`, and `/invocations`) wraps the answer in a list "to match
        # api-inference"; `/generate` answers the object.
        return _json_reply(200, payload if route == "/generate" else [payload])
    usage = {
        "prompt_tokens": len(_tokens(request.prompt)),
        "completion_tokens": len(words),
        "total_tokens": len(_tokens(request.prompt)) + len(words),
    }
    common = {
        "id": f"fake-{server._next_id()}",
        "created": int(time.time()),
        "model": server.model_id,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "usage": usage,
    }
    openai_finish = "length" if finish == "length" else "stop"
    if schema_name == "ChatRequest":
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": openai_finish}
        return _json_reply(200, {"object": "chat.completion", **common, "choices": [choice]})
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": openai_finish}
    return _json_reply(200, {"object": "text_completion", **common, "choices": [choice]})


def _generation_request(
    schema_name: str, body: dict[str, Any], flavor: Flavor
) -> GenerationRequest:
    if schema_name in ("GenerateRequest", "CompatGenerateRequest"):
        params = body.get("parameters") or {}
        return GenerationRequest(
            kind="generate",
            prompt=body["inputs"],
            body=body,
            schema=_grammar_schema(params.get("grammar")),
            stop=tuple(params.get("stop") or ()),
            max_new_tokens=params.get("max_new_tokens"),
        )
    if schema_name == "ChatRequest":
        contents = [m.get("content") for m in body["messages"]]
        response_format = body.get("response_format")
        schema = (
            _openai_schema(response_format)
            if flavor == "openai"
            else _grammar_schema(response_format)
        )
        return GenerationRequest(
            kind="chat",
            prompt="\n".join(c for c in contents if isinstance(c, str)),
            body=body,
            schema=schema,
            stop=tuple(body.get("stop") or ()),
            max_new_tokens=body.get("max_tokens"),
        )
    prompt = body["prompt"]
    return GenerationRequest(
        kind="completion",
        prompt=prompt if isinstance(prompt, str) else "\n".join(prompt),
        body=body,
        # OpenAI-compatible servers (vLLM) take the chat API's response_format on completions.
        schema=_openai_schema(body.get("response_format")) if flavor == "openai" else None,
        stop=tuple(body.get("stop") or ()),
        max_new_tokens=body.get("max_tokens"),
    )


def _grammar_schema(grammar: Any) -> Any:
    if not isinstance(grammar, dict):
        return None
    if grammar.get("type") == "json":
        value = grammar.get("value")
        return json.loads(value) if isinstance(value, str) else value
    if grammar.get("type") == "json_schema":
        return (grammar.get("value") or {}).get("schema")
    return None


def _openai_schema(response_format: Any) -> Any:
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema")
    return None


def _tokens(text: str) -> list[str]:
    """The fake's tokenizer: one token per whitespace-separated word."""
    return text.split()


def _limit(text: str, stop: tuple[str, ...], max_new_tokens: int | None) -> tuple[str, str]:
    """Apply stop sequences (kept in the text, like TGI) and max_new_tokens to the answer."""
    finish = "eos_token"
    for sequence in stop:
        at = text.find(sequence) if sequence else -1
        if at >= 0:
            text, finish = text[: at + len(sequence)], "stop_sequence"
            break
    words = list(re.finditer(r"\S+", text))
    if max_new_tokens is not None and len(words) > max_new_tokens:
        end = words[max_new_tokens - 1].end() if max_new_tokens else 0
        text, finish = text[:end], "length"
    return text, finish


def _generate_response(
    request: GenerationRequest, words: list[str], text: str, finish: str
) -> dict[str, Any]:
    params = request.body.get("parameters") or {}
    generated = request.prompt + text if params.get("return_full_text") else text
    response: dict[str, Any] = {"generated_text": generated}
    if params.get("details", True):
        tokens = [
            {"id": i + 1, "text": word, "logprob": -0.5, "special": False}
            for i, word in enumerate(words)
        ]
        prefill = []
        if params.get("decoder_input_details"):
            prefill = [
                {"id": i + 1, "text": word, "logprob": None if i == 0 else -1.0}
                for i, word in enumerate(_tokens(request.prompt))
            ]
        response["details"] = {
            "finish_reason": finish,
            "generated_tokens": len(words),
            "prefill": prefill,
            "tokens": tokens,
            "seed": None,
        }
    return response


# --------------------------------------------------------------------------- streams
# TGI answers a stream as server-sent events, one `data:` line of JSON per token (StreamResponse
# on /generate_stream; ChatCompletionChunk / Chunk then `data: [DONE]` on the OpenAI routes);
# an error during generation is an ErrorResponse event (TGI router/src/server.rs). SageMaker's
# InvokeEndpointWithResponseStream wraps those bytes in `PayloadPart` events of the
# application/vnd.amazon.eventstream encoding, cut wherever the container's writes fall.

STREAM_PART_BYTES = 7
"""SageMaker payload parts of this fake: small, so parts split lines and UTF-8 characters."""


def _wants_stream(path: str, body: Any) -> bool:
    if path.endswith("/invocations-response-stream") or path == "/generate_stream":
        return True
    return isinstance(body, dict) and body.get("stream") is True


def stream_payloads(
    server: TgiServer, schema_name: str, body: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[str]]:
    """(the stream's JSON events, the token texts): what `_stream` sends, paced."""
    request = _generation_request(schema_name, body, server.flavor)
    text, finish = _limit(server.responder(request), request.stop, request.max_new_tokens)
    pieces = re.findall(r"\s*\S+", text) or [""]
    created = int(time.time())
    events: list[dict[str, Any]] = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        if schema_name in ("GenerateRequest", "CompatGenerateRequest"):
            details = {
                "finish_reason": finish,
                "generated_tokens": len(pieces),
                "input_length": len(_tokens(request.prompt)),
                "seed": None,
            }
            events.append(
                {
                    "index": i,
                    "token": {"id": i + 1, "text": piece, "logprob": -0.5, "special": False},
                    "generated_text": text if last else None,
                    "details": details if last else None,
                }
            )
            continue
        common = {
            "id": f"fake-{server._next_id()}",
            "created": created,
            "model": server.model_id,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        reason = ("length" if finish == "length" else "stop") if last else None
        if schema_name == "ChatRequest":
            delta = {"role": "assistant", "content": piece}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            events.append({"object": "chat.completion.chunk", **common, "choices": [choice]})
        else:
            choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": reason or ""}
            events.append({"object": "text_completion", **common, "choices": [choice]})
    return events, pieces


def _stream(server: TgiServer, handler: LlmHandler, body: Any) -> None:  # noqa: C901 - TGI's stream in wire order, faults injected at their token
    path = handler.path
    sagemaker = path.startswith("/endpoints/")
    route = "/invocations" if sagemaker else path
    schema_name = _request_schema(route, body)
    problems = server.spec.errors(schema_name, body) + _tgi_semantic_errors(body)
    if problems:
        reply = _tgi_error(422, "Input validation error: " + "; ".join(problems))
        if sagemaker:
            reply = _as_sagemaker_model_error(reply)
        handler._send(reply)
        return
    fault = server._next_fault()
    if fault is not None and not fault.kind.startswith("stream_"):
        faulty = _fault_reply(server, fault, sagemaker)
        if faulty is None:
            handler.close_connection = True
            return
        if sagemaker and faulty.status >= 400 and "x-amzn-ErrorType" not in faulty.headers:
            faulty = _as_sagemaker_model_error(faulty)
        handler._send(faulty)
        return
    server.sleep(server.delay_s)
    events, _ = stream_payloads(server, schema_name, body)
    lines = [f"data:{json.dumps(e)}\n\n".encode() for e in events]
    if schema_name != "GenerateRequest" and schema_name != "CompatGenerateRequest":
        lines.append(b"data: [DONE]\n\n")

    handler._start_stream(sagemaker)
    try:
        for i, line in enumerate(lines):
            if fault is not None and i == fault.after_tokens:
                if fault.kind == "stream_drop":
                    handler.close_connection = True
                    return  # no terminating chunk: the client sees a broken stream
                if fault.kind == "stream_stall":
                    server.sleep(fault.seconds)
                if fault.kind == "stream_error":
                    error = {"error": fault.message, "error_type": "generation"}
                    if sagemaker:
                        _write_chunk(handler, model_stream_error(fault.message))
                    else:
                        _write_chunk(handler, f"data:{json.dumps(error)}\n\n".encode())
                    break
            server.sleep(server.token_delay_s)
            handler._write_event(line, sagemaker)
            if i == 0:
                server.first_token_sent_s.append(time.perf_counter())
        _write_chunk(handler, b"")
    except (BrokenPipeError, ConnectionResetError):
        handler._stream_ended_early()


def _write_chunk(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    """One HTTP/1.1 chunk, flushed at once; an empty one ends the body."""
    handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    handler.wfile.flush()


def eventstream_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One message of the application/vnd.amazon.eventstream encoding, built by hand from its
    spec (https://docs.aws.amazon.com/transcribe/latest/dg/streaming-setting-up.html#streaming-event-stream):
    prelude (total length, headers length, CRC32 of those 8 bytes), headers (name length, name,
    type 7 = string, value length, value), payload, CRC32 of everything before it."""
    encoded = b"".join(
        bytes([len(name)])
        + name.encode()
        + b"\x07"
        + len(value).to_bytes(2, "big")
        + value.encode()
        for name, value in headers.items()
        for value in [value]
    )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = total.to_bytes(4, "big") + len(encoded).to_bytes(4, "big")
    prelude += zlib.crc32(prelude).to_bytes(4, "big")
    message = prelude + encoded + payload
    return message + zlib.crc32(message).to_bytes(4, "big")


def payload_part(data: bytes) -> bytes:
    """SageMaker runtime's `PayloadPart` event (its `Bytes` member is the raw payload)."""
    headers = {
        ":event-type": "PayloadPart",
        ":content-type": "application/octet-stream",
        ":message-type": "event",
    }
    return eventstream_message(headers, data)


def model_stream_error(message: str) -> bytes:
    """SageMaker runtime's `ModelStreamError` exception event."""
    headers = {
        ":exception-type": "ModelStreamError",
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    body = json.dumps({"Message": message, "ErrorCode": "424"}).encode()
    return eventstream_message(headers, body)


# --------------------------------------------------------------------------- response schemas


def response_schema(path: str, request_body: Any) -> tuple[str, bool]:
    """(component schema, is_list) a 200 answer to this request must validate against."""
    sagemaker = path.startswith("/endpoints/") or path == "/invocations"
    schema_name = _request_schema("/invocations" if sagemaker else path, request_body)
    if schema_name == "ChatRequest":
        return "ChatCompletion", False
    if schema_name == "CompletionRequest":
        return "CompletionFinal", False
    return "GenerateResponse", path != "/generate"


# --------------------------------------------------------------------------- as a process


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake TGI server for local runs and benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per generation call")
    parser.add_argument("--flavor", choices=("tgi", "openai"), default="tgi")
    parser.add_argument("--answer", default=DEFAULT_ANSWER, help="text of every answer")
    parser.add_argument(
        "--token-delay", type=float, default=0.0, help="seconds before each streamed token"
    )
    args = parser.parse_args(argv)
    server = TgiServer(
        json_or(fixed(args.answer)),
        delay_s=args.delay,
        token_delay_s=args.token_delay,
        flavor=args.flavor,
        host=args.host,
        port=args.port,
    )
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with server:
        print(f"fake TGI listening on {server.url}", flush=True)
        done.wait()


if __name__ == "__main__":
    main()
