"""Builds the one trace event per request (docs/CONTRACTS.md, schema 1).

Only the request thread touches a `TraceRecorder`: helper threads return their timings and the
pipeline records them, so no lock is needed and no late span can land in a sent event.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from rag.domain.errors import ApiError
from rag.domain.ids import new_id

TRACE_SCHEMA = 1
SpanType = Literal["llm", "general"]


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time (UTC) for trace timestamps."""
        ...

    def perf_s(self) -> float:
        """Monotonic seconds for durations."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def perf_s(self) -> float:
        return time.perf_counter()


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error_dict(exc: BaseException) -> dict[str, str]:
    """The API error contract for known failures; only the type name for anything else, since
    an arbitrary exception message may hold a URL, a payload or a secret."""
    if isinstance(exc, ApiError):
        return {"code": exc.code, "message": exc.message}
    return {"code": "internal_error", "message": type(exc).__name__}


@dataclass
class Span:
    name: str
    type: SpanType
    started_at: datetime
    start_perf_s: float
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, int] | None = None
    error: dict[str, str] | None = None
    ended_at: datetime | None = None
    duration_ms: float = 0.0
    id: str = field(default_factory=new_id)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at or self.started_at),
            "input": self.input,
            "output": self.output,
            "metadata": {**self.metadata, "duration_ms": round(self.duration_ms, 3)},
            "usage": self.usage,
            "error": self.error,
        }


class TraceRecorder:
    def __init__(self, name: str, clock: Clock, input: Mapping[str, Any]):
        self.name = name
        self.trace_id = new_id()
        self.clock = clock
        self.input = dict(input)
        self.started_at = clock.now()
        self.start_perf_s = clock.perf_s()
        self.spans: list[Span] = []
        self.fallbacks: list[str] = []
        self.warnings: list[str] = []
        self.metadata: dict[str, Any] = {}

    def start_span(
        self, name: str, *, type: SpanType = "general", input: dict[str, Any] | None = None
    ) -> Span:
        return Span(
            name=name,
            type=type,
            started_at=self.clock.now(),
            start_perf_s=self.clock.perf_s(),
            input=input,
        )

    def end_span(self, span: Span, *, error: BaseException | None = None) -> None:
        span.ended_at = self.clock.now()
        span.duration_ms = (self.clock.perf_s() - span.start_perf_s) * 1000
        if error is not None:
            span.error = error_dict(error)
        self.spans.append(span)

    @contextmanager
    def span(
        self, name: str, *, type: SpanType = "general", input: dict[str, Any] | None = None
    ) -> Iterator[Span]:
        """Time a block; an exception is recorded on the span and propagates."""
        span = self.start_span(name, type=type, input=input)
        try:
            yield span
        except BaseException as exc:
            self.end_span(span, error=exc)
            raise
        self.end_span(span)

    def fallback(self, name: str, warning: str | None = None) -> None:
        if name not in self.fallbacks:
            self.fallbacks.append(name)
        if warning:
            self.warnings.append(warning)

    def elapsed_ms(self) -> float:
        return (self.clock.perf_s() - self.start_perf_s) * 1000

    def timings_ms(self) -> dict[str, float]:
        timings = {span.name: round(span.duration_ms, 3) for span in self.spans}
        timings["total"] = round(self.elapsed_ms(), 3)
        return timings

    def event(
        self,
        *,
        status: int,
        output: dict[str, Any] | None,
        error: BaseException | None,
        usage: dict[str, int] | None,
        tags: list[str],
    ) -> dict[str, Any]:
        spans = sorted(self.spans, key=lambda s: s.started_at)
        return {
            "schema": TRACE_SCHEMA,
            "trace_id": self.trace_id,
            "name": self.name,
            "started_at": iso(self.started_at),
            "ended_at": iso(self.clock.now()),
            "input": self.input,
            "output": output,
            "metadata": {
                **self.metadata,
                "status": status,
                "fallbacks": list(self.fallbacks),
                "warnings": list(self.warnings),
            },
            "tags": tags,
            "usage": usage,
            "error": None if error is None else error_dict(error),
            "spans": [span.as_dict() for span in spans],
        }
