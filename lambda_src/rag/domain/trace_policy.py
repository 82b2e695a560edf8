"""What a trace event may carry: trimming to a size in a defined order (context, then prompt,
then answer) and redaction of the user's words (DESIGN 3.4). Pure functions of the event; the
sinks in `rag.adapters.trace_sinks` apply them."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from trace_contract import SpanName

TRIM_MARKER = "…[trimmed {n} chars]"
"""Appended where text was cut: a reader in Opik sees the field is incomplete, and by how much."""

Redaction = Literal["none", "hash_query", "drop_texts"]
SPAN_KEYS = ("input", "output")
PROMPT_FIELDS = ((SpanName.PROMPT, "output"), (SpanName.GENERATE, "input"))
"""(span name, field) pairs that hold the assembled prompt."""
ANSWER_FIELDS = ((SpanName.GENERATE, "output"),)
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


# ---------------------------------------------------------------------------------------------
# Size: trim in a defined order until the message fits


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
    return len(dumps(event).encode("utf-8")) <= max_bytes


def dumps(event: Mapping[str, Any]) -> str:
    # ensure_ascii=False: SQS counts UTF-8 bytes, and \uXXXX escapes would cost up to 6 per char.
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)


# ---------------------------------------------------------------------------------------------
# Policy helpers


def has_error(event: Mapping[str, Any]) -> bool:
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
