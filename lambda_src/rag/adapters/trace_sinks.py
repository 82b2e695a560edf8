"""Trace sinks: where the business Lambda hands its per-request trace event (DESIGN 3.4).

In AWS the event goes to SQS and the forwarder Lambda takes it to Opik; locally it goes to a
JSONL file (and, wired by the local server, to Opik directly). Every sink honours the
`TraceSink` contract: `send` never raises into the request path.

This module must not import opik: the business Lambda bundle has no room for it (DESIGN 4).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import random
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from botocore.config import Config

from rag.domain.budget import SQS_CONNECT_TIMEOUT_S, SQS_MAX_ATTEMPTS, SQS_READ_TIMEOUT_S
from rag.domain.ports import TraceSink
from rag.settings import Settings

SQS_MAX_MESSAGE_BYTES = 1_048_576
"""SQS's largest message body, 1 MiB (raised from 256 KiB): "More room to build: serverless
services now support payloads up to 1 MB", AWS Compute Blog, 2026-01-29
(https://aws.amazon.com/blogs/compute/more-room-to-build-serverless-services-now-support-payloads-up-to-1-mb).
The queue's own MaximumMessageSize must be set to this value too (it may be lower)."""

METRIC_SEND_FAILED = "trace_send_failed"
METRIC_TRIMMED = "trace_trimmed"
METRIC_SAMPLED_OUT = "trace_sampled_out"

TRIM_MARKER = "…[trimmed {n} chars]"
"""Appended where text was cut: a reader in Opik sees the field is incomplete, and by how much."""

Redaction = Literal["none", "hash_query", "drop_texts"]
MetricCallback = Callable[[str], None]

SPAN_KEYS = ("input", "output")
PROMPT_FIELDS = (("prompt", "output"), ("generate", "input"))
"""(span name, field) pairs that hold the assembled prompt."""
ANSWER_FIELDS = (("generate", "output"),)
REDACTED_PARTS = ("input", "output", "metadata")
"""Parts of the event and of each span that redaction walks; names, times, usage, tags and error
codes/messages (the project's own words, never the request's text) are left as they are."""
KEPT_TEXT_KEYS = frozenset(
    {
        "id",
        "document_id",
        "author_id",
        "collection",
        "collections",
        "platform",
        "link",
        "model",
        "model_id",
        "model_revision",
        "embedding_model",
        "reranker_model",
        "endpoint",
        "inference_component",
        "finish_reason",
        "code",
        "prompt_format",
        "role",
        "author_source",
        "fallbacks",
        "warnings",
        "counter",
        "stop",
        "dropped_ids",
        "cut_id",
        "redaction",
        "trimmed",
    }
)
"""Redaction keeps string values only under these keys: ids, labels and the project's own notes,
none of which holds the user's words. Fail closed: a text field added later is redacted rather
than leaked. Person names (`author`, `author_full_name`, `author_filter`) are not kept: the
filter comes from the request or from the query (self-query), so it is the user's data."""
HASH_PREFIX = "hmac-sha256:"

_Path = tuple[str | int, ...]


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
        if not _has_error(event) and self._rng.random() >= self.sample_rate:
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


# ---------------------------------------------------------------------------------------------
# Size: trim in a defined order until the message fits


def encode_for_sqs(event: Mapping[str, Any], max_bytes: int) -> tuple[str, list[str]]:
    """The message body for `event`, trimmed to `max_bytes` when needed, and the trimmed paths."""
    body = _dumps(event)
    if len(body.encode("utf-8")) <= max_bytes:
        return body, []
    trimmed_event, trimmed = trim_event(event, max_bytes)
    return _dumps(trimmed_event), trimmed


def trim_event(event: Mapping[str, Any], max_bytes: int) -> tuple[dict[str, Any], list[str]]:
    """Cut text fields, tier by tier, until the serialized event fits in `max_bytes`.

    Tiers, in order: (1) span inputs/outputs and other output fields (retrieved context,
    expanded queries, tool texts), (2) the prompt, (3) the answer, (4) the request input.
    Within a tier every string is capped at the same length, the largest that fits, so the
    result is deterministic and no one field is emptied while others stay whole. Each cut string
    ends with `TRIM_MARKER`, and `metadata.trimmed` lists the cut fields.
    Raises ValueError if the event cannot fit even with every text cut to its marker.
    """
    work = copy.deepcopy(dict(event))
    if not isinstance(work.get("metadata"), dict):
        work["metadata"] = {}
    trimmed: list[str] = []
    for tier in _tiers(work):
        leaves = [(path, value) for path, value in tier if len(value) > 0]
        if not leaves:
            continue
        if _fits(_with_cap(work, leaves, None, trimmed), max_bytes):
            return _with_cap(work, leaves, None, trimmed), trimmed
        longest = max(len(value) for _, value in leaves)
        low, high = 0, longest
        if not _fits(_with_cap(work, leaves, 0, trimmed), max_bytes):
            work = _with_cap(work, leaves, 0, trimmed)
            trimmed = list(work["metadata"]["trimmed"])
            continue
        while low < high:  # the largest cap that fits
            mid = (low + high + 1) // 2
            if _fits(_with_cap(work, leaves, mid, trimmed), max_bytes):
                low = mid
            else:
                high = mid - 1
        result = _with_cap(work, leaves, low, trimmed)
        return result, list(result["metadata"]["trimmed"])
    if _fits(work, max_bytes):
        return work, trimmed
    raise ValueError(f"trace event does not fit in {max_bytes} bytes even with every text cut")


def _tiers(event: dict[str, Any]) -> list[list[tuple[_Path, str]]]:
    prompt_spans = {name: field for name, field in PROMPT_FIELDS}
    answer_spans = {name: field for name, field in ANSWER_FIELDS}
    context: list[tuple[_Path, str]] = []
    prompt: list[tuple[_Path, str]] = []
    answer: list[tuple[_Path, str]] = []
    for index, span in enumerate(event.get("spans") or []):
        name = span.get("name")
        for key in SPAN_KEYS:
            leaves = list(_string_leaves(span.get(key), ("spans", index, key)))
            if prompt_spans.get(name) == key:
                prompt.extend(leaves)
            elif answer_spans.get(name) == key:
                answer.extend(leaves)
            else:
                context.extend(leaves)
    output = event.get("output")
    if isinstance(output, dict):
        for key, value in output.items():
            leaves = list(_string_leaves(value, ("output", key)))
            (answer if key == "answer" else context).extend(leaves)
    request_input = list(_string_leaves(event.get("input"), ("input",)))
    return [context, prompt, answer, request_input]


def _string_leaves(value: Any, path: _Path) -> Iterator[tuple[_Path, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _string_leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _string_leaves(item, (*path, index))


def _with_cap(
    event: dict[str, Any], leaves: list[tuple[_Path, str]], cap: int | None, trimmed: list[str]
) -> dict[str, Any]:
    """A copy of `event` with every leaf longer than `cap` cut to `cap` chars plus the marker."""
    out = copy.deepcopy(event)
    paths = list(trimmed)
    if cap is not None:
        for path, value in leaves:
            cut = value[:cap] + TRIM_MARKER.format(n=len(value) - cap)
            if len(cut) < len(value):  # a short string would only grow by the marker
                _set(out, path, cut)
                paths.append(_path_name(event, path))
    if paths:
        out["metadata"]["trimmed"] = paths
    return out


def _set(root: Any, path: _Path, value: str) -> None:
    node = root
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _path_name(event: Mapping[str, Any], path: _Path) -> str:
    """`spans.search.output.chunks.0.content`: span named rather than numbered, for readers."""
    parts: list[str] = []
    for position, key in enumerate(path):
        if position == 1 and path[0] == "spans" and isinstance(key, int):
            parts.append(str(event["spans"][key].get("name", key)))
        else:
            parts.append(str(key))
    return ".".join(parts)


def _fits(event: Mapping[str, Any], max_bytes: int) -> bool:
    return len(_dumps(event).encode("utf-8")) <= max_bytes


def _dumps(event: Mapping[str, Any]) -> str:
    # ensure_ascii=False: SQS counts UTF-8 bytes, and \uXXXX escapes would cost up to 6 per char.
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)


# ---------------------------------------------------------------------------------------------
# Policy helpers


def _has_error(event: Mapping[str, Any]) -> bool:
    if event.get("error"):
        return True
    return any(span.get("error") for span in event.get("spans") or [])


def keyed_digest(key: bytes, text: str) -> str:
    """HMAC-SHA256 of `text` under `key`: equal texts group together, and without the key a
    short or common query cannot be guessed back from its digest (a plain hash could be)."""
    return HASH_PREFIX + hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def redact(event: dict[str, Any], redaction: Redaction, key: bytes | None = None) -> None:
    """Redact, in place, every text of the event's and spans' input, output and metadata that is
    not under a `KEPT_TEXT_KEYS` key: hash_query replaces it with its keyed digest (`key`
    required), drop_texts removes it. Numbers, booleans, ids, scores and timings stay."""
    if redaction == "none":
        return
    if redaction == "hash_query":
        if not key:
            raise ValueError("hash_query needs a key")
        secret = key

        def replace(text: str) -> str | None:
            return keyed_digest(secret, text)

    else:

        def replace(text: str) -> str | None:
            return None

    for part in (event, *(event.get("spans") or [])):
        for name in REDACTED_PARTS:
            if part.get(name) is not None:
                part[name] = _redact_in(part[name], replace)


def _redact_in(value: Any, replace: Callable[[str], str | None], key: str | None = None) -> Any:
    if isinstance(value, str):
        return value if key in KEPT_TEXT_KEYS else replace(value)
    if isinstance(value, dict):
        kept = {k: _redact_in(item, replace, k) for k, item in value.items()}
        return {k: item for k, item in kept.items() if item is not None or value[k] is None}
    if isinstance(value, list):
        items = [_redact_in(item, replace, key) for item in value]
        return [item for item in items if item is not None]
    return value


def _aws_error_code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None
