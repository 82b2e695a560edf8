"""Trace sinks: where the business Lambda hands its per-request trace event (DESIGN 3.4).

In AWS the event goes to SQS and the forwarder Lambda takes it to Opik; locally it goes to a
JSONL file (and, wired by the local server, to Opik directly). Every sink honours the
`TraceSink` contract: `send` never raises into the request path.

This module must not import opik: the business Lambda bundle has no room for it (DESIGN 4).
"""

from __future__ import annotations

import copy
import json
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from botocore.config import Config

from rag.domain.budget import SQS_CONNECT_TIMEOUT_S, SQS_MAX_ATTEMPTS, SQS_READ_TIMEOUT_S
from rag.domain.ports import TraceSink
from rag.domain.trace_policy import (
    Redaction,
    dumps,
    has_error,
    redact,
    trim_event,
)
from rag.settings import Settings

SQS_MAX_MESSAGE_BYTES = 1_048_576
"""SQS's largest message body, 1 MiB (raised from 256 KiB): "More room to build: serverless
services now support payloads up to 1 MB", AWS Compute Blog, 2026-01-29
(https://aws.amazon.com/blogs/compute/more-room-to-build-serverless-services-now-support-payloads-up-to-1-mb).
The queue's own MaximumMessageSize must be set to this value too (it may be lower)."""

METRIC_SEND_FAILED = "trace_send_failed"
METRIC_TRIMMED = "trace_trimmed"
METRIC_SAMPLED_OUT = "trace_sampled_out"

MetricCallback = Callable[[str], None]


def _count_metric(name: str) -> None:
    # Imported late: rag.observability builds the package's Metrics, which only the
    # business Lambda's handler flushes; tests inject their own callback instead.
    from rag.observability import metrics

    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)


def _default_logger() -> Logger:
    from rag.observability import logger

    return logger


# ---------------------------------------------------------------------------------------------
# Sinks


class MemoryTraceSink:
    """Keeps events in a list; for tests and for the local server's debug views."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def send(self, event: Mapping[str, Any]) -> None:
        with self._lock:
            self.events.append(copy.deepcopy(dict(event)))


class JsonlTraceSink:
    """Local mode: one JSON line per event, appended under a lock (the local server is threaded)."""

    def __init__(self, path: str | Path, *, logger: Logger | None = None) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._logger = logger or _default_logger()

    def send(self, event: Mapping[str, Any]) -> None:
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as file:
                    file.write(line)
        except OSError as exc:
            self._logger.warning(
                "trace event not written",
                extra={"sink": "jsonl", "path": str(self.path), "error_type": type(exc).__name__},
            )


class FanoutSink:
    """Sends every event to each sink in turn (local mode: JSONL file + Opik direct)."""

    def __init__(self, *sinks: TraceSink, logger: Logger | None = None) -> None:
        self.sinks = sinks
        self._logger = logger or _default_logger()

    def send(self, event: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            try:
                sink.send(event)
            except Exception as exc:  # a sink breaking its contract must not starve the others
                self._logger.warning(
                    "trace sink raised",
                    extra={"sink": type(sink).__name__, "error_type": type(exc).__name__},
                )


class SqsTraceSink:
    """Sends each event as one SQS message; the forwarder Lambda takes it on to Opik.

    Events above `max_bytes` are trimmed (see `trim_event`), never dropped. A failing SQS is
    logged (without event content) and counted as `trace_send_failed`; the request goes on.
    """

    def __init__(
        self,
        queue_url: str,
        *,
        client: Any = None,
        max_bytes: int = SQS_MAX_MESSAGE_BYTES,
        count_metric: MetricCallback | None = None,
        logger: Logger | None = None,
    ) -> None:
        self.queue_url = queue_url
        self.max_bytes = max_bytes
        self._client = client or boto3.client(
            "sqs",
            config=Config(
                connect_timeout=SQS_CONNECT_TIMEOUT_S,
                read_timeout=SQS_READ_TIMEOUT_S,
                # total_max_attempts counts the first try; botocore's max_attempts would not.
                retries={"total_max_attempts": SQS_MAX_ATTEMPTS, "mode": "standard"},
            ),
        )
        self._count = count_metric or _count_metric
        self._logger = logger or _default_logger()

    def send(self, event: Mapping[str, Any]) -> None:
        trace_id = event.get("trace_id")
        try:
            body, trimmed = encode_for_sqs(event, self.max_bytes)
            if trimmed:
                self._count(METRIC_TRIMMED)
                self._logger.info(
                    "trace event trimmed to fit SQS",
                    extra={"trace_id": trace_id, "trimmed_fields": len(trimmed)},
                )
            self._client.send_message(QueueUrl=self.queue_url, MessageBody=body)
        except Exception as exc:  # any failure here must not reach the answer
            self._count(METRIC_SEND_FAILED)
            self._logger.warning(
                "trace event not sent to SQS",
                extra={
                    "trace_id": trace_id,
                    "error_type": type(exc).__name__,
                    "error_code": _aws_error_code(exc),
                },
            )


class PolicySink:
    """Applies the trace settings, sampling then redaction, before the inner sink sees an event."""

    def __init__(
        self,
        inner: TraceSink,
        *,
        sample_rate: float,
        redaction: Redaction,
        hash_key: bytes | None = None,
        rng: random.Random | None = None,
        count_metric: MetricCallback | None = None,
    ) -> None:
        if not 0 <= sample_rate <= 1:
            raise ValueError(f"sample_rate must be within 0..1, got {sample_rate}")
        if redaction not in ("none", "hash_query", "drop_texts"):
            raise ValueError(f"redaction must be none, hash_query or drop_texts, got {redaction!r}")
        if redaction == "hash_query" and not hash_key:
            raise ValueError("redaction hash_query needs a hash key")
        self._key = hash_key
        self.inner = inner
        self.sample_rate = sample_rate
        self.redaction = redaction
        self._rng = rng or random.Random()
        self._count = count_metric or _count_metric

    def send(self, event: Mapping[str, Any]) -> None:
        if not has_error(event) and self._rng.random() >= self.sample_rate:
            self._count(METRIC_SAMPLED_OUT)
            return
        out = copy.deepcopy(dict(event))
        if not isinstance(out.get("metadata"), dict):
            out["metadata"] = {}
        metadata = out["metadata"]
        # The sampling weight lets a reader of Opik scale counts back up.
        metadata["sample_rate"] = self.sample_rate
        if self.redaction != "none":
            metadata["redaction"] = self.redaction
        redact(out, self.redaction, self._key)
        self.inner.send(out)


def build_sink(
    settings: Settings,
    *,
    extra: Sequence[TraceSink] = (),
    sqs_client: Any = None,
    fetch_secret: Callable[[str], str] | None = None,
) -> TraceSink:
    """The sink the settings ask for: SQS in AWS, a JSONL file locally, both if both are set, plus
    `extra` sinks (local mode: Opik direct), all behind one sampling and redaction policy."""
    sinks: list[TraceSink] = []
    if settings.trace_queue_url:
        sinks.append(SqsTraceSink(settings.trace_queue_url, client=sqs_client))
    if settings.trace_file:
        sinks.append(JsonlTraceSink(settings.trace_file))
    sinks.extend(extra)
    if not sinks:  # traces off (e.g. deployed without Opik): nothing to redact, no key to read
        return _DiscardSink()
    inner: TraceSink = sinks[0] if len(sinks) == 1 else FanoutSink(*sinks)
    return PolicySink(
        inner,
        sample_rate=settings.trace_sample_rate,
        redaction=settings.trace_redaction,
        hash_key=settings.trace_hash_key(fetch_secret),
    )


class _DiscardSink:
    """No trace destination configured (e.g. a unit test of the pipeline): nothing to send."""

    def send(self, event: Mapping[str, Any]) -> None:
        return None


def encode_for_sqs(event: Mapping[str, Any], max_bytes: int) -> tuple[str, list[str]]:
    """The message body for `event`, trimmed to `max_bytes` when needed, and the trimmed paths."""
    body = dumps(event)
    if len(body.encode("utf-8")) <= max_bytes:
        return body, []
    trimmed_event, trimmed = trim_event(event, max_bytes)
    return dumps(trimmed_event), trimmed


def _aws_error_code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None
