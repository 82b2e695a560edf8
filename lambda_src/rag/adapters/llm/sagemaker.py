"""The `ports.LLM` adapter for a SageMaker real-time endpoint running Hugging Face TGI or vLLM
(bodies and parsing in `rag.adapters.llm.protocol`); every failure becomes a
`rag.domain.errors.ApiError`.

Timeout budget of one SageMaker call (DESIGN 5: API Gateway 29 s > Lambda > SageMaker read timeout):
botocore makes at most MAX_ATTEMPTS = 2 attempts, and `_RetryGuard` only lets the second one
happen when the first failed fast (connect failure, throttle, SageMaker 5xx within FAST_FAILURE_S);
a read timeout is never retried, because the model may still be generating and a retry would double
both the GPU work and the wait. So the worst case is

    max(connect, FAST_FAILURE_S) + RETRY_BACKOFF_MAX_S + ADAPTIVE_WAIT_MAX_S + connect + read

which `rag.domain.budget.worst_case_call_s` computes (e.g. connect 1 s, read 16 s -> 22 s); the
pipeline
shortens the generation call's read timeout to what is left of the request budget.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from urllib3.exceptions import ProtocolError
from urllib3.exceptions import ReadTimeoutError as Urllib3ReadTimeoutError

from rag.adapters.llm.protocol import (
    RETRY_AFTER_ENDPOINT_MISSING_S,
    RETRY_AFTER_NOT_READY_S,
    RETRY_AFTER_OVERLOADED_S,
    RETRY_AFTER_SCALE_FROM_ZERO_S,
    RETRY_AFTER_TRANSIENT_S,
    RETRY_AFTER_UNREACHABLE_S,
    TGI_CHAT_MODEL,
    Engine,
    decode_json,
    error_for_status,
    int_or_none,
    openai_chat_body,
    openai_completion_body,
    parse_chat_response,
    parse_completion_response,
    parse_generate_response,
    short_reason,
    stalled,
    tgi_chat_body,
    tgi_generate_body,
)
from rag.adapters.llm.stream import StreamKind, TextStream
from rag.domain.budget import FAST_FAILURE_S, MAX_ATTEMPTS
from rag.domain.errors import (
    ApiError,
    ModelError,
    ModelUnavailable,
    Throttled,
    UpstreamTimeout,
)
from rag.domain.ports import Generation, GenerationParams


def botocore_config(connect_timeout_s: float, read_timeout_s: float) -> Config:
    return Config(
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"mode": "adaptive", "total_max_attempts": MAX_ATTEMPTS},
        tcp_keepalive=True,
    )


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
        return decode_json(raw)

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
            return ModelError(f"The model failed while streaming: {short_reason(message)}")
        if code in ("InternalFailure", "InternalStreamFailure"):
            return ModelError(f"SageMaker failed internally ({code}).")
        if code == "ValidationError":
            return ModelError(
                f"SageMaker rejected the call: {short_reason(message)}", code="sagemaker_validation"
            )
        return ModelError(f"The SageMaker call failed ({code or 'unknown error'}).")

    def _map_model_error(self, response: Mapping[str, Any], message: str) -> ApiError:
        """ModelError: the container answered an error (OriginalStatusCode), or none (0)."""
        status = int_or_none(response.get("OriginalStatusCode"))
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
