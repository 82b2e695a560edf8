"""The two `ports.LLM` adapters: a SageMaker real-time endpoint running Hugging Face TGI or vLLM,
and a plain HTTP TGI / OpenAI-compatible server (local mode). TGI is spoken as its 3.3.6 protocol
(`../shared/contracts/tgi-openapi.json`), vLLM as OpenAI's completions and chat; both adapters
turn every failure into a `rag.domain.errors.ApiError`.

Timeout budget of one SageMaker call (DESIGN 5: API Gateway 29 s > Lambda > SageMaker read timeout):
botocore makes at most MAX_ATTEMPTS = 2 attempts, and `_RetryGuard` only lets the second one
happen when the first failed fast (connect failure, throttle, SageMaker 5xx within FAST_FAILURE_S);
a read timeout is never retried, because the model may still be generating and a retry would double
both the GPU work and the wait. So the worst case is

    max(connect, FAST_FAILURE_S) + RETRY_BACKOFF_MAX_S + ADAPTIVE_WAIT_MAX_S + connect + read

which `rag.domain.budget.worst_case_call_s` computes (e.g. connect 1 s, read 16 s -> 22 s); the pipeline
shortens the generation call's read timeout to what is left of the request budget.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import urllib3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError
from urllib3.exceptions import ReadTimeoutError as Urllib3ReadTimeoutError

from rag.adapters.llm.stream import StreamKind, TextStream
from rag.domain.budget import FAST_FAILURE_S, MAX_ATTEMPTS
from rag.domain.errors import (
    ApiError,
    BadRequest,
    ModelError,
    ModelUnavailable,
    Throttled,
    UpstreamTimeout,
)
from rag.domain.ports import LLM, Generation, GenerationParams

Api = Literal["tgi", "openai"]
Engine = Literal["tgi", "vllm"]
"""The container behind a SageMaker endpoint: TGI's bodies, or vLLM's OpenAI-compatible ones."""

RETRY_AFTER_SCALE_FROM_ZERO_S = 60
"""Inference component at zero copies: scale-out starts ~1 min after the first failed call."""
RETRY_AFTER_ENDPOINT_MISSING_S = 300
"""Endpoint absent or still creating: creating a GPU endpoint takes several minutes."""
RETRY_AFTER_NOT_READY_S = 30
RETRY_AFTER_TRANSIENT_S = 5
RETRY_AFTER_OVERLOADED_S = 2
RETRY_AFTER_UNREACHABLE_S = 10

TGI_CHAT_MODEL = "tgi"
"""TGI ignores `model` in chat requests; its docs use "tgi"."""
STREAM_READ_BYTES = 64 * 1024
"""Most bytes taken from the socket at once; a read returns as soon as any bytes arrived."""
MAX_REASON_CHARS = 300
"""Upstream reasons are quoted to the client, cut to this length."""
JSON_SCHEMA_NAME = "output"


def botocore_config(connect_timeout_s: float, read_timeout_s: float) -> Config:
    return Config(
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"mode": "adaptive", "total_max_attempts": MAX_ATTEMPTS},
        tcp_keepalive=True,
    )


# --------------------------------------------------------------------------- request bodies


def tgi_generate_body(
    prompt: str, params: GenerationParams, json_schema: Mapping[str, Any] | None
) -> dict[str, Any]:
    """TGI CompatGenerateRequest / GenerateRequest."""
    parameters: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens,
        "details": True,
        # SageMaker's TGI defaults return_full_text to true for text-generation models.
        "return_full_text": False,
        "stop": list(params.stop),
        **_sampling(params, temperature_zero_means_greedy=False),
    }
    if json_schema is not None:
        parameters["grammar"] = {"type": "json", "value": dict(json_schema)}
    return {"inputs": prompt, "parameters": parameters}


def tgi_chat_body(
    messages: Sequence[Mapping[str, str]],
    params: GenerationParams,
    json_schema: Mapping[str, Any] | None,
    *,
    model: str = TGI_CHAT_MODEL,
) -> dict[str, Any]:
    """TGI ChatRequest; `response_format` is TGI's GrammarType."""
    body = _chat_common(messages, params, model)
    if json_schema is not None:
        body["response_format"] = {"type": "json", "value": dict(json_schema)}
    return body


def openai_chat_body(
    messages: Sequence[Mapping[str, str]],
    params: GenerationParams,
    json_schema: Mapping[str, Any] | None,
    *,
    model: str,
) -> dict[str, Any]:
    body = _chat_common(messages, params, model)
    if json_schema is not None:
        body["response_format"] = _json_schema_format(json_schema)
    return body


def openai_completion_body(
    prompt: str, params: GenerationParams, json_schema: Mapping[str, Any] | None, *, model: str
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": params.max_new_tokens,
        "stop": list(params.stop),
        **_sampling(params, temperature_zero_means_greedy=True),
    }
    if json_schema is not None:
        # vLLM's completions take the chat API's response_format too; its older `guided_json`
        # extra field is gone and would be ignored (vllm entrypoints/openai/completion/protocol.py).
        body["response_format"] = _json_schema_format(json_schema)
    return body


def _json_schema_format(json_schema: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's structured output; vLLM enforces it with guided decoding (structured_outputs)."""
    return {
        "type": "json_schema",
        "json_schema": {"name": JSON_SCHEMA_NAME, "schema": dict(json_schema), "strict": True},
    }


def _chat_common(
    messages: Sequence[Mapping[str, str]], params: GenerationParams, model: str
) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [dict(m) for m in messages],
        "max_tokens": params.max_new_tokens,
        "stop": list(params.stop),
        **_sampling(params, temperature_zero_means_greedy=True),
    }


def _sampling(params: GenerationParams, *, temperature_zero_means_greedy: bool) -> dict[str, Any]:
    """Sampling fields TGI accepts: it rejects temperature <= 0 on /generate and top_p >= 1
    everywhere (422), while its chat and completions routes read temperature 0 as greedy."""
    out: dict[str, Any] = {}
    if params.temperature > 0:
        out["temperature"] = params.temperature
        if not temperature_zero_means_greedy:
            out["do_sample"] = True
    elif temperature_zero_means_greedy:
        out["temperature"] = 0.0
    else:
        out["do_sample"] = False
    if 0 < params.top_p < 1:
        out["top_p"] = params.top_p
    return out


# --------------------------------------------------------------------------- response parsing


def parse_generate_response(payload: Any, stop: Sequence[str] = ()) -> Generation:
    """TGI GenerateResponse, or the one-element list SageMaker's /invocations returns."""
    item = payload[0] if isinstance(payload, list) and len(payload) == 1 else payload
    if not isinstance(item, dict) or not isinstance(item.get("generated_text"), str):
        raise _malformed("a generate response without generated_text")
    details = _dict(item.get("details"))
    prefill = details.get("prefill")
    return Generation(
        text=_strip_stop(item["generated_text"], stop),
        # prefill is only filled when decoder_input_details is requested (costly), so often None.
        prompt_tokens=len(prefill) if isinstance(prefill, list) and prefill else None,
        completion_tokens=_int_or_none(details.get("generated_tokens")),
        finish_reason=details.get("finish_reason"),
    )


def parse_chat_response(payload: Any, stop: Sequence[str] = ()) -> Generation:
    """ChatCompletion: choices[0].message.content + usage."""
    try:
        choice = payload["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise _malformed("a chat response without choices[0].message.content") from None
    if not isinstance(content, str):
        raise _malformed("a chat response whose message content is not text")
    return _with_usage(payload, content, choice.get("finish_reason"), stop)


def parse_completion_response(payload: Any, stop: Sequence[str] = ()) -> Generation:
    """CompletionFinal: choices[0].text + usage."""
    try:
        choice = payload["choices"][0]
        text = choice["text"]
    except (KeyError, IndexError, TypeError):
        raise _malformed("a completion response without choices[0].text") from None
    if not isinstance(text, str):
        raise _malformed("a completion response whose text is not a string")
    return _with_usage(payload, text, choice.get("finish_reason"), stop)


def _with_usage(
    payload: Mapping[str, Any], text: str, finish: Any, stop: Sequence[str]
) -> Generation:
    usage = _dict(payload.get("usage"))
    return Generation(
        text=_strip_stop(text, stop),
        prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
        completion_tokens=_int_or_none(usage.get("completion_tokens")),
        finish_reason=finish if isinstance(finish, str) else None,
    )


def _strip_stop(text: str, stop: Sequence[str]) -> str:
    """TGI keeps the matched stop sequence in the text, OpenAI servers drop it: drop it always."""
    for sequence in stop:
        if sequence and text.endswith(sequence):
            return text[: -len(sequence)]
    return text


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _decode_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _malformed("a body that is not JSON") from None


def _malformed(what: str) -> ModelError:
    return ModelError(f"The model returned {what}.", code="model_bad_response")


# --------------------------------------------------------------------------- status mapping


def error_for_status(
    status: int, body: bytes | str, *, retry_after: str | None = None, where: str
) -> ApiError:
    """Map a TGI / OpenAI-compatible HTTP error status (DESIGN 3.1)."""
    reason = _reason(body)
    if status in (400, 413, 422):
        return BadRequest(f"The model rejected the input: {reason}", code="model_input_invalid")
    if status == 429:
        return Throttled(
            f"The model is overloaded: {reason}",
            code="model_overloaded",
            retry_after_s=_retry_after_s(retry_after, RETRY_AFTER_OVERLOADED_S),
        )
    if status == 404:
        return ModelUnavailable(
            f"No model answers at {where} (404).",
            code="endpoint_not_found",
            retry_after_s=RETRY_AFTER_ENDPOINT_MISSING_S,
        )
    if status == 503:
        return ModelUnavailable(
            f"The model is not available: {reason}",
            retry_after_s=_retry_after_s(retry_after, RETRY_AFTER_NOT_READY_S),
        )
    if status == 504:
        return UpstreamTimeout(f"The model timed out: {reason}", code="model_timeout")
    return ModelError(f"The model failed (status {status}): {reason}")


def _reason(body: bytes | str) -> str:
    """TGI ErrorResponse `error`, OpenAI `error.message`, else the text itself, shortened."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    reason = text.strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, str):
            reason = error
        elif isinstance(error, dict) and isinstance(error.get("message"), str):
            reason = error["message"]
        elif isinstance(parsed.get("message"), str):
            reason = parsed["message"]
    reason = " ".join(reason.split()) or "no reason given"
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 3] + "..."


def _retry_after_s(header: str | None, default_s: int) -> int:
    if header is not None and header.strip().isdigit():
        return int(header.strip())
    return default_s


# --------------------------------------------------------------------------- SageMaker


class _RetryGuard:
    """botocore hooks that veto a retry after a read timeout or a slow failure.

    botocore retries every HTTPClientError, read timeouts included, and cannot be told otherwise;
    raising the caught exception from a `needs-retry` handler ends the retry loop with it.
    """

    _STARTED = "rag_attempt_started_s"

    OPERATIONS = ("InvokeEndpoint", "InvokeEndpointWithResponseStream")

    def install(self, client: Any) -> None:
        events = client.meta.events
        for operation in self.OPERATIONS:
            events.register_first(
                f"request-created.sagemaker-runtime.{operation}",
                self._on_request_created,
                unique_id=f"rag-llm-attempt-clock-{operation}",
            )
            events.register_first(
                f"needs-retry.sagemaker-runtime.{operation}",
                self._on_needs_retry,
                unique_id=f"rag-llm-retry-guard-{operation}",
            )

    def _on_request_created(self, request: Any, **_: Any) -> None:
        request.context[self._STARTED] = time.monotonic()

    def _on_needs_retry(
        self,
        request_dict: Mapping[str, Any],
        caught_exception: Exception | None = None,
        response: Any = None,
        **_: Any,
    ) -> None:
        if isinstance(caught_exception, ReadTimeoutError):
            raise caught_exception
        if isinstance(caught_exception, (EndpointConnectionError, ConnectTimeoutError)):
            return  # never sent, bounded by the connect timeout: botocore may retry
        started = request_dict.get("context", {}).get(self._STARTED)
        failed = caught_exception is not None or (response is not None and _is_error(response))
        if failed and started is not None and time.monotonic() - started > FAST_FAILURE_S:
            if caught_exception is not None:
                raise caught_exception
            raise _SlowFailure(response)


class _SlowFailure(Exception):
    """Carries a slow error response out of botocore's retry loop, to be mapped like any other."""

    def __init__(self, response: Any) -> None:
        super().__init__("slow failure")
        self.response = response


def _is_error(response: Any) -> bool:
    http, _parsed = response
    return bool(http.status_code >= 400)


class SageMakerLLM:
    """`ports.LLM` on a SageMaker real-time endpoint through `invoke_endpoint`: a TGI container
    (its /generate and Messages API bodies) or a vLLM one (`engine="vllm"`: OpenAI completions and
    chat bodies, which vLLM's /invocations routes by their shape; `model` is the served name).

    Clients are built per read timeout (a call's `timeout_s`, rounded up to whole seconds) and
    reused. An injected `client` serves every call with its own config; the retry guard is added
    to it too.
    """

    def __init__(
        self,
        endpoint_name: str,
        inference_component: str | None = None,
        *,
        client: Any = None,
        connect_timeout_s: float,
        read_timeout_s: float,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        engine: Engine = "tgi",
        model: str | None = None,
    ) -> None:
        if engine not in ("tgi", "vllm"):
            raise ValueError(f"engine must be 'tgi' or 'vllm', not {engine!r}")
        if engine == "vllm" and not model:
            raise ValueError("a vLLM endpoint needs the served model name")
        self.engine = engine
        self.model = model or TGI_CHAT_MODEL
        self.endpoint_name = endpoint_name
        self.inference_component = inference_component
        self.description = f"sagemaker:{endpoint_name}" + (
            f"/{inference_component}" if inference_component else ""
        )
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._region_name = region_name
        self._endpoint_url = endpoint_url
        self._injected = client
        self._clients: dict[float, Any] = {}
        self._lock = threading.Lock()
        self._session: Any = None
        if client is not None:
            _RetryGuard().install(client)

    def complete(
        self,
        prompt: str,
        params: GenerationParams,
        *,
        json_schema: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Generation:
        if self.engine == "vllm":
            body = openai_completion_body(prompt, params, json_schema, model=self.model)
            return parse_completion_response(self._invoke(body, timeout_s), params.stop)
        body = tgi_generate_body(prompt, params, json_schema)
        return parse_generate_response(self._invoke(body, timeout_s), params.stop)

    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        params: GenerationParams,
        *,
        json_schema: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Generation:
        build = openai_chat_body if self.engine == "vllm" else tgi_chat_body
        body = build(messages, params, json_schema, model=self.model)
        return parse_chat_response(self._invoke(body, timeout_s), params.stop)

    def client_for(self, timeout_s: float | None = None) -> Any:
        """The boto3 `sagemaker-runtime` client a call with this read timeout uses."""
        if self._injected is not None:
            return self._injected
        read_s = float(math.ceil(timeout_s)) if timeout_s is not None else self.read_timeout_s
        with self._lock:
            client = self._clients.get(read_s)
            if client is None:
                client = self._new_client(read_s)
                self._clients[read_s] = client
            return client

    def _new_client(self, read_timeout_s: float) -> Any:
        import boto3  # the Lambda runtime provides it; imported late so local mode can skip it

        if self._session is None:
            self._session = boto3.session.Session()
        client = self._session.client(
            "sagemaker-runtime",
            region_name=self._region_name,
            endpoint_url=self._endpoint_url,
            config=botocore_config(self.connect_timeout_s, read_timeout_s),
        )
        _RetryGuard().install(client)
        return client

    def stream_complete(
        self, prompt: str, params: GenerationParams, *, stall_timeout_s: float
    ) -> TextStream:
        """`stream: true` at /invocations through InvokeEndpointWithResponseStream: TGI's
        StreamResponse events, or vLLM's completion chunks ending in `data: [DONE]`."""
        if self.engine == "vllm":
            body = {
                **openai_completion_body(prompt, params, None, model=self.model),
                "stream": True,
            }
            return self._stream(body, "completion", stall_timeout_s)
        body = {**tgi_generate_body(prompt, params, None), "stream": True}
        return self._stream(body, "tgi", stall_timeout_s)

    def stream_chat(
        self,
        messages: Sequence[Mapping[str, str]],
        params: GenerationParams,
        *,
        stall_timeout_s: float,
    ) -> TextStream:
        build = openai_chat_body if self.engine == "vllm" else tgi_chat_body
        body = {**build(messages, params, None, model=self.model), "stream": True}
        return self._stream(body, "chat", stall_timeout_s)

    def _invoke_kwargs(self, body: Mapping[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "EndpointName": self.endpoint_name,
            "Body": json.dumps(body).encode(),
            "ContentType": "application/json",
        }
        if self.inference_component:
            kwargs["InferenceComponentName"] = self.inference_component
        return kwargs

    def _invoke(self, body: Mapping[str, Any], timeout_s: float | None) -> Any:
        client = self.client_for(timeout_s)
        with self._mapped_errors(client, streaming=False):
            response = client.invoke_endpoint(
                **self._invoke_kwargs(body), Accept="application/json"
            )
            raw = response["Body"].read()
        return _decode_json(raw)

    def _stream(
        self, body: Mapping[str, Any], kind: StreamKind, stall_timeout_s: float
    ) -> TextStream:
        """Opens the stream now (so an endpoint at zero copies is a plain 503 before any byte is
        sent to the client); the payload parts are read as they arrive. A part may end anywhere,
        even inside a UTF-8 character: `TextStream`'s SSE decoder reassembles them."""
        client = self.client_for(stall_timeout_s)
        with self._mapped_errors(client, streaming=True):
            response = client.invoke_endpoint_with_response_stream(**self._invoke_kwargs(body))
        events = response["Body"]

        def chunks() -> Iterator[bytes]:
            with self._mapped_errors(client, streaming=True):
                for event in events:
                    part = event.get("PayloadPart")
                    if part:
                        yield part.get("Bytes", b"")

        return TextStream(kind, chunks(), events.close)

    @contextmanager
    def _mapped_errors(self, client: Any, *, streaming: bool) -> Iterator[None]:
        """Every botocore / transport failure of a call as the contract's ApiError. While a
        response stream is read, botocore hands urllib3's own exceptions through unwrapped."""
        read_s = client.meta.config.read_timeout
        try:
            yield
        except ClientError as exc:  # EventStreamError (ModelStreamError...) is a ClientError
            raise self._map_client_error(exc.response) from None
        except _SlowFailure as exc:
            raise self._map_client_error(_error_dict(exc.response)) from None
        except (ReadTimeoutError, Urllib3ReadTimeoutError):
            if streaming:
                raise stalled(read_s) from None
            raise UpstreamTimeout(
                f"The model did not answer within {read_s:g} s.", code="model_timeout"
            ) from None
        except (EndpointConnectionError, ConnectTimeoutError):
            raise ModelUnavailable(
                "The SageMaker runtime could not be reached.",
                code="model_unreachable",
                retry_after_s=RETRY_AFTER_UNREACHABLE_S,
            ) from None
        except (ConnectionClosedError, ProtocolError):
            raise ModelError(
                "The connection to SageMaker closed before an answer.",
                code="model_connection_lost",
            ) from None
        except BotoCoreError as exc:
            raise ModelError(
                f"The SageMaker call failed ({type(exc).__name__}).", code="model_error"
            ) from None

    def _map_client_error(self, response: Mapping[str, Any]) -> ApiError:
        """SageMaker runtime errors: botocore's sagemaker-runtime 2017-05-13 model, plus the
        messages SageMaker is observed to send (the report of issue 3 lists the sources)."""
        error = response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message") or "")
        lowered = message.lower()
        if code == "ModelError":
            return self._map_model_error(response, message)
        if code == "ValidationError" and "no capacity" in lowered:
            return ModelUnavailable(
                "The model is scaled to zero and is starting; retry shortly.",
                code="model_scaling_from_zero",
                retry_after_s=RETRY_AFTER_SCALE_FROM_ZERO_S,
            )
        if code == "ValidationError" and "not found" in lowered:
            what = "inference component" if "inference component" in lowered else "endpoint"
            return ModelUnavailable(
                f"The SageMaker {what} of {self.description} does not exist (yet).",
                code="endpoint_not_found",
                retry_after_s=RETRY_AFTER_ENDPOINT_MISSING_S,
            )
        if code == "ValidationError" and "inference component name header is required" in lowered:
            return ModelUnavailable(
                f"{self.description} hosts inference components; set the component name.",
                code="endpoint_misconfigured",
            )
        if code == "ModelNotReadyException":
            return ModelUnavailable(
                "The model is still loading; retry shortly.",
                code="model_not_ready",
                retry_after_s=RETRY_AFTER_NOT_READY_S,
            )
        if code in ("ServiceUnavailable", "InternalDependencyException"):
            return ModelUnavailable(
                f"SageMaker is unavailable ({code}); retry shortly.",
                code="sagemaker_unavailable",
                retry_after_s=RETRY_AFTER_TRANSIENT_S,
            )
        if code in ("ThrottlingException", "Throttling", "TooManyRequestsException"):
            return Throttled(
                "SageMaker throttled the call; retry shortly.",
                code="sagemaker_throttled",
                retry_after_s=RETRY_AFTER_OVERLOADED_S,
            )
        if code == "ModelStreamError":  # the container's error event inside a response stream
            return ModelError(f"The model failed while streaming: {_reason(message)}")
        if code in ("InternalFailure", "InternalStreamFailure"):
            return ModelError(f"SageMaker failed internally ({code}).")
        if code == "ValidationError":
            return ModelError(
                f"SageMaker rejected the call: {_reason(message)}", code="sagemaker_validation"
            )
        return ModelError(f"The SageMaker call failed ({code or 'unknown error'}).")

    def _map_model_error(self, response: Mapping[str, Any], message: str) -> ApiError:
        """ModelError: the container answered an error (OriginalStatusCode), or none (0)."""
        status = _int_or_none(response.get("OriginalStatusCode"))
        original = response.get("OriginalMessage")
        if not status:
            if "timed out" in message.lower():
                return UpstreamTimeout(
                    "The model did not answer within SageMaker's invocation limit.",
                    code="model_timeout",
                )
            return ModelError("The model container did not answer.", code="model_error")
        return error_for_status(
            status, original if isinstance(original, str) else "", where=self.description
        )


def _error_dict(response: Any) -> Mapping[str, Any]:
    _http, parsed = response
    return cast(Mapping[str, Any], parsed)


# --------------------------------------------------------------------------- plain HTTP


class HttpLLM:
    """`ports.LLM` on a TGI server (`api="tgi"`: /generate, /v1/chat/completions) or an
    OpenAI-compatible one such as vLLM or Ollama (`api="openai"`: /v1/completions,
    /v1/chat/completions). One urllib3 pool serves every call and thread."""

    def __init__(
        self,
        base_url: str,
        *,
        api: Api = "tgi",
        model: str | None = None,
        pool: urllib3.PoolManager | None = None,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        if api not in ("tgi", "openai"):
            raise ValueError(f"api must be 'tgi' or 'openai', not {api!r}")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL")
        self.api = api
        self.base_url = base_url.rstrip("/")
        self.model = model or TGI_CHAT_MODEL
        # Host and port only: a URL may carry credentials that must not reach traces.
        self.description = f"{api}:{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        # Connection failures happen before the request is sent, so one retry is safe; nothing
        # is retried once the server may have started generating.
        retries = urllib3.Retry(total=1, connect=1, read=0, status=0, other=0, redirect=0)
        self._pool = pool or urllib3.PoolManager(maxsize=8, retries=retries)

    def complete(
        self,
        prompt: str,
        params: GenerationParams,
        *,
        json_schema: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Generation:
        if self.api == "tgi":
            payload = self._post(
                "/generate", tgi_generate_body(prompt, params, json_schema), timeout_s
            )
            return parse_generate_response(payload, params.stop)
        body = openai_completion_body(prompt, params, json_schema, model=self.model)
        return parse_completion_response(
            self._post("/v1/completions", body, timeout_s), params.stop
        )

    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        params: GenerationParams,
        *,
        json_schema: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Generation:
        build = tgi_chat_body if self.api == "tgi" else openai_chat_body
        body = build(messages, params, json_schema, model=self.model)
        return parse_chat_response(self._post("/v1/chat/completions", body, timeout_s), params.stop)

    def stream_complete(
        self, prompt: str, params: GenerationParams, *, stall_timeout_s: float
    ) -> TextStream:
        """TGI /generate_stream, or `stream: true` on /v1/completions."""
        if self.api == "tgi":
            body = tgi_generate_body(prompt, params, None)
            return self._stream("/generate_stream", body, "tgi", stall_timeout_s)
        body = {**openai_completion_body(prompt, params, None, model=self.model), "stream": True}
        return self._stream("/v1/completions", body, "completion", stall_timeout_s)

    def stream_chat(
        self,
        messages: Sequence[Mapping[str, str]],
        params: GenerationParams,
        *,
        stall_timeout_s: float,
    ) -> TextStream:
        build = tgi_chat_body if self.api == "tgi" else openai_chat_body
        body = {**build(messages, params, None, model=self.model), "stream": True}
        return self._stream("/v1/chat/completions", body, "chat", stall_timeout_s)

    def close(self) -> None:
        self._pool.clear()

    def _stream(
        self, path: str, body: Mapping[str, Any], kind: StreamKind, stall_timeout_s: float
    ) -> TextStream:
        """Sends the request and checks the status now; the events are read as they arrive,
        each socket read bounded by `stall_timeout_s` (no byte for that long: a stalled model)."""
        response = self._request(path, body, read_s=stall_timeout_s, stream=True)

        def chunks() -> Iterator[bytes]:
            try:
                while data := response.read1(STREAM_READ_BYTES):
                    yield data
            except Urllib3ReadTimeoutError:
                raise stalled(stall_timeout_s) from None
            except Urllib3HTTPError as exc:
                raise self._map_transport_error(exc, stall_timeout_s) from None

        def close() -> None:
            # Closing the socket is what tells the model server to stop generating.
            response.close()
            response.release_conn()

        return TextStream(kind, chunks(), close)

    def _post(self, path: str, body: Mapping[str, Any], timeout_s: float | None) -> Any:
        read_s = timeout_s if timeout_s is not None else self.read_timeout_s
        return _decode_json(self._request(path, body, read_s=read_s, stream=False).data)

    def _request(
        self, path: str, body: Mapping[str, Any], *, read_s: float, stream: bool
    ) -> urllib3.BaseHTTPResponse:
        """POSTs `body` as JSON; transport failures and 4xx/5xx become the API's errors. A
        streamed response is returned unread (each socket read bounded by `read_s`)."""
        try:
            response = self._pool.request(
                "POST",
                self.base_url + path,
                body=json.dumps(body).encode(),
                headers={
                    "Content-Type": "application/json",
                    "Accept": "text/event-stream" if stream else "application/json",
                },
                timeout=urllib3.Timeout(connect=self.connect_timeout_s, read=read_s),
                preload_content=not stream,
            )
        except MaxRetryError as exc:
            raise self._map_transport_error(exc.reason, read_s) from None
        except Urllib3HTTPError as exc:
            raise self._map_transport_error(exc, read_s) from None
        if response.status >= 400:
            data = response.read() if stream else response.data
            response.release_conn()
            raise error_for_status(
                response.status,
                data,
                retry_after=response.headers.get("Retry-After"),
                where=self.description,
            )
        return response

    def _map_transport_error(self, exc: BaseException | None, read_s: float) -> ApiError:
        if isinstance(exc, Urllib3ReadTimeoutError):
            return UpstreamTimeout(
                f"The model did not answer within {read_s:g} s.", code="model_timeout"
            )
        if isinstance(exc, (NewConnectionError, urllib3.exceptions.ConnectTimeoutError)):
            return ModelUnavailable(
                f"The model server {self.description} is unreachable.",
                code="model_unreachable",
                retry_after_s=RETRY_AFTER_UNREACHABLE_S,
            )
        if isinstance(exc, ProtocolError):
            return ModelError(
                "The model server closed the connection before answering.",
                code="model_connection_lost",
            )
        return ModelError(
            f"The call to the model server failed ({type(exc).__name__}).", code="model_error"
        )


def stalled(stall_timeout_s: float) -> UpstreamTimeout:
    return UpstreamTimeout(
        f"The model sent nothing for {stall_timeout_s:g} s; the stream was stopped.",
        code="model_stalled",
    )


# --------------------------------------------------------------------------- factory


def build_llm(
    *,
    url: str | None,
    api: Api = "tgi",
    endpoint: str | None,
    inference_component: str | None = None,
    connect_timeout_s: float,
    read_timeout_s: float,
    model: str | None = None,
    engine: Engine = "tgi",
) -> LLM | None:
    """The configured adapter: a SageMaker endpoint wins over a URL; None when neither is set
    (the caller answers 503 llm_not_configured). `engine` picks the endpoint's body format."""
    if endpoint:
        return SageMakerLLM(
            endpoint,
            inference_component or None,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            engine=engine,
            model=model,
        )
    if url:
        return HttpLLM(
            url,
            api=api,
            model=model,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
        )
    return None
