"""The `ports.LLM` adapter for a plain HTTP TGI / OpenAI-compatible server (local mode); bodies
and parsing in `rag.adapters.llm.protocol`, every failure a `rag.domain.errors.ApiError`."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError
from urllib3.exceptions import ReadTimeoutError as Urllib3ReadTimeoutError

from rag.adapters.llm.protocol import (
    RETRY_AFTER_UNREACHABLE_S,
    TGI_CHAT_MODEL,
    Api,
    decode_json,
    error_for_status,
    openai_chat_body,
    openai_completion_body,
    parse_chat_response,
    parse_completion_response,
    parse_generate_response,
    stalled,
    tgi_chat_body,
    tgi_generate_body,
)
from rag.adapters.llm.stream import StreamKind, TextStream
from rag.domain.errors import (
    ApiError,
    ModelError,
    ModelUnavailable,
    UpstreamTimeout,
)
from rag.domain.ports import Generation, GenerationParams

STREAM_READ_BYTES = 64 * 1024
"""Most bytes taken from the socket at once; a read returns as soon as any bytes arrived."""


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
        return decode_json(self._request(path, body, read_s=read_s, stream=False).data)

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
