"""Trace events (schema 1) in, Opik traces and spans out, written synchronously.

Why synchronous REST and not `opik.Opik().trace()` + `flush()`: the SDK's background sender
never raises, parks connection failures for a later replay (not reported as loss), retries 5xx
for ~11 s before recording a drop, and reports drops only as counts per flush, never per
trace. The forwarder must fail exactly the SQS records Opik did not take, so it calls the
SDK's own REST client (`opik.rest_api.OpikApi`, on the SDK's httpx client with its auth
headers and gzip bodies) and lets every failure raise. Retrying is SQS's job (visibility
timeout, maxReceiveCount, DLQ), not sleeps inside a billed Lambda.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Literal

import httpx
from aws_lambda_powertools import Logger
from opik import httpx_client as opik_httpx
from opik.rest_api import OpikApi
from opik.rest_api.core.api_error import ApiError
from opik.rest_api.types.error_info_write import ErrorInfoWrite
from opik.rest_api.types.span_write import SpanWrite
from opik.rest_api.types.trace_write import TraceWrite
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trace_contract import SpanName

UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})
"""Statuses that mean Opik (or its gateway) is down or shedding load, not that this trace is bad."""
AUTH_STATUSES = frozenset({401, 403})
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")

SPAN_CONTEXT_KEYS: dict[SpanName, tuple[str, ...]] = {
    SpanName.SELF_QUERY: ("model_id", "model_revision", "endpoint", "inference_component"),
    SpanName.QUERY_EXPANSION: ("model_id", "model_revision", "endpoint", "inference_component"),
    SpanName.EMBED: ("embedding_model",),
    SpanName.SEARCH: ("embedding_model", "k", "collections"),
    SpanName.RERANK: ("reranker_model", "k"),
    SpanName.PROMPT: ("prompt_format",),
    SpanName.GENERATE: (
        "model_id",
        "model_revision",
        "endpoint",
        "inference_component",
        "prompt_format",
    ),
}
"""Trace metadata each span repeats, so a span read on its own in Opik says what produced it."""


OPIK_TRACE_WINDOW_S = 24 * 3600
"""Opik refuses trace ids whose UUIDv7 timestamp is older than this (its default window)."""
RELOCATION_BUCKET_S = 3600
"""A late trace's new id carries the start of the current hour: redeliveries within the hour get
the same id (Opik upserts one trace), and the id stays well inside the window."""


class MalformedEvent(ValueError):
    """The record is not a valid schema-1 trace event; retrying will not help."""


class OpikUnavailable(RuntimeError):
    """Opik could not be reached or is shedding load; the record is retried by SQS."""


class OpikRejected(RuntimeError):
    """Opik refused the trace (4xx); the record is retried, then lands in the DLQ."""


def _uuid7(value: str) -> str:
    parsed = uuid.UUID(value)
    if parsed.version != 7:
        raise ValueError(f"must be a UUIDv7, got version {parsed.version}")
    return str(parsed)


class ErrorBody(BaseModel):
    code: str
    message: str


class SpanEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    name: SpanName
    type: Literal["llm", "general"] = "general"
    started_at: datetime
    ended_at: datetime
    parent_id: str | None = None
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    error: ErrorBody | None = None

    _ids = field_validator("id", "parent_id")(
        lambda value: None if value is None else _uuid7(value)
    )


class TraceEvent(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    schema_version: Literal[1] = Field(alias="schema")
    trace_id: str
    name: Literal["rag", "retrieve"]
    started_at: datetime
    ended_at: datetime
    input: dict[str, Any] = Field(default_factory=dict)
    output: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    usage: dict[str, Any] | None = None
    error: ErrorBody | None = None
    spans: list[SpanEvent] = Field(default_factory=list)

    _trace_id = field_validator("trace_id")(lambda value: _uuid7(value))


def uuid7_ms(value: str) -> int:
    """The Unix milliseconds a UUIDv7 carries in its first 48 bits (RFC 9562)."""
    return uuid.UUID(value).int >> 80


def relocated_id(original: str, *, now_s: float) -> str:
    """A UUIDv7 for a late trace or span: the current hour as its time, the rest derived from
    the original id, so the same late event gets the same new ids until the hour turns."""
    ms = int(now_s // RELOCATION_BUCKET_S * RELOCATION_BUCKET_S * 1000)
    digest = int.from_bytes(hashlib.sha256(original.encode()).digest()[:10], "big")
    rand_a, rand_b = digest >> 68, digest & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | ((rand_a & 0xFFF) << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))


def relocate_if_late(
    event: TraceEvent, *, now_s: float, window_s: int = OPIK_TRACE_WINDOW_S
) -> TraceEvent:
    """The event as Opik will take it: a trace id older than Opik's window (less the bucket the
    new id may lag by) is replaced, the original kept in the metadata as `original_trace_id`.
    Opik applies the same window to span ids (comet-ml/opik#7179), and spans were created with
    their trace, so their ids (and parent ids, by the same derivation) are replaced too, each
    original kept as `original_span_id`. Times stay those of the request."""
    age_s = now_s - uuid7_ms(event.trace_id) / 1000
    if age_s < window_s - RELOCATION_BUCKET_S:
        return event

    def moved(span_id: str | None) -> str | None:
        return None if span_id is None else relocated_id(span_id, now_s=now_s)

    spans = [
        span.model_copy(
            update={
                "id": moved(span.id),
                "parent_id": moved(span.parent_id),
                "metadata": {**(span.metadata or {}), "original_span_id": span.id},
            }
        )
        for span in event.spans
    ]
    return event.model_copy(
        update={
            "trace_id": relocated_id(event.trace_id, now_s=now_s),
            "metadata": {**event.metadata, "original_trace_id": event.trace_id},
            "spans": spans,
        }
    )


def parse_event(body: str) -> TraceEvent:
    """Validate one SQS body; a `MalformedEvent` names every problem found."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise MalformedEvent(f"body is not JSON: {exc.msg} at char {exc.pos}") from None
    if not isinstance(data, dict):
        raise MalformedEvent(f"body is a JSON {type(data).__name__}, expected an object")
    try:
        return TraceEvent.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '<root>'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise MalformedEvent(f"not a schema-1 trace event: {problems}") from None


def _usage(raw: Mapping[str, Any] | None) -> dict[str, int] | None:
    if not raw:
        return None
    usage = {key: int(raw[key]) for key in USAGE_KEYS if isinstance(raw.get(key), int)}
    if "total_tokens" not in usage and {"prompt_tokens", "completion_tokens"} <= usage.keys():
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage or None


def _error_info(error: ErrorBody | None) -> ErrorInfoWrite | None:
    if error is None:
        return None
    # Opik requires a traceback; the API error contract has none, so it repeats code + message.
    return ErrorInfoWrite(
        exception_type=error.code, message=error.message, traceback=f"{error.code}: {error.message}"
    )


def to_trace_write(event: TraceEvent, *, project_name: str) -> TraceWrite:
    metadata = {**event.metadata, "schema": event.schema_version}
    usage = _usage(event.usage)
    if usage:
        metadata["usage"] = usage
    return TraceWrite(
        id=event.trace_id,
        project_name=project_name,
        name=event.name,
        start_time=event.started_at,
        end_time=event.ended_at,
        input=event.input,
        output=event.output,
        metadata=metadata,
        tags=event.tags or None,
        error_info=_error_info(event.error),
        # The event's own end time, not "now": a redelivered event is then byte-identical, and
        # Opik's upsert keeps one trace.
        last_updated_at=event.ended_at,
    )


def to_span_writes(event: TraceEvent, *, project_name: str) -> list[SpanWrite]:
    spans = []
    for span in event.spans:
        context = {
            key: event.metadata[key]
            for key in SPAN_CONTEXT_KEYS.get(span.name, ())
            if key in event.metadata
        }
        usage = _usage(span.usage)
        if usage is None and span.name == SpanName.GENERATE:
            usage = _usage(event.usage)
        spans.append(
            SpanWrite(
                id=span.id,
                project_name=project_name,
                trace_id=event.trace_id,
                parent_span_id=span.parent_id,
                name=span.name,
                type=span.type,
                start_time=span.started_at,
                end_time=span.ended_at,
                input=span.input,
                output=span.output,
                metadata={**context, **(span.metadata or {})},
                model=event.metadata.get("model_id") if span.type == "llm" else None,
                tags=event.tags or None,
                usage=usage,
                error_info=_error_info(span.error),
                last_updated_at=span.ended_at,
            )
        )
    return spans


def build_rest_client(*, url: str, workspace: str, api_key: str | None) -> OpikApi:
    """The SDK's REST client on the SDK's own httpx client (auth, workspace, gzip), no retries."""
    http = opik_httpx.get(
        workspace=workspace,
        api_key=api_key,
        check_tls_certificate=True,
        compress_json_requests=True,
    )
    return OpikApi(base_url=url, httpx_client=http)


class OpikWriter:
    """Writes one event's trace and spans and raises unless Opik accepted both.

    Within a batch, once Opik is known to be unreachable the remaining records fail at once
    instead of each waiting for its own timeout; `begin_batch` resets that.
    """

    def __init__(
        self,
        rest: OpikApi,
        *,
        project_name: str,
        timeout_s: int,
        trace_window_s: int = OPIK_TRACE_WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rest = rest
        self.project_name = project_name
        self.timeout_s = timeout_s
        self.trace_window_s = trace_window_s
        self.clock = clock
        self._down_reason: str | None = None

    def begin_batch(self) -> None:
        self._down_reason = None

    def write(self, event: TraceEvent) -> None:
        if self._down_reason is not None:
            raise OpikUnavailable(f"not attempted: {self._down_reason} earlier in this batch")
        event = relocate_if_late(event, now_s=self.clock(), window_s=self.trace_window_s)
        trace = to_trace_write(event, project_name=self.project_name)
        spans = to_span_writes(event, project_name=self.project_name)
        options: dict[str, Any] = {"timeout_in_seconds": self.timeout_s, "max_retries": 0}
        try:
            self.rest.traces.create_traces(traces=[trace], request_options=options)  # type: ignore[arg-type]
            if spans:
                self.rest.spans.create_spans(spans=spans, request_options=options)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            self._down_reason = f"Opik unreachable ({type(exc).__name__})"
            raise OpikUnavailable(self._down_reason) from exc
        except ApiError as exc:
            status = exc.status_code or 0
            if status in UNAVAILABLE_STATUSES or status in AUTH_STATUSES:
                self._down_reason = f"Opik returned HTTP {status}"
                raise OpikUnavailable(self._down_reason) from exc
            if status >= 500:
                raise OpikUnavailable(f"Opik returned HTTP {status}") from exc
            raise OpikRejected(f"Opik rejected the trace with HTTP {status}") from exc


class OpikEventSink:
    """Local mode's direct path to Opik (a `rag.domain.ports.TraceSink`): logs failures, never
    raises."""

    def __init__(self, writer: OpikWriter, *, logger: Logger | None = None) -> None:
        self.writer = writer
        self._logger = logger or Logger(utc=True)

    def send(self, event: Mapping[str, Any]) -> None:
        try:
            self.writer.begin_batch()
            self.writer.write(parse_event(json.dumps(event, default=str)))
        except Exception as exc:
            self._logger.warning(
                "trace event not written to Opik",
                extra={"trace_id": event.get("trace_id"), "error": str(exc)},
            )
