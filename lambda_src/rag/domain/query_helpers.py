"""The LLM helpers, run side by side within LLM_HELPER_TIMEOUT_S: self-query (the author the
query names) and query expansion (alternative phrasings).

Fallbacks (each recorded in `metadata.fallbacks`, with the reason on the span):
- `self_query`: the LLM call failed, timed out, returned something unparseable, or there is
  no LLM (retrieve only) -> no author filter.
- `query_expansion`: same causes -> the original query only."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from rag import observability as obs
from rag.domain.deps import Deps
from rag.domain.errors import ModelError, UpstreamTimeout
from rag.domain.models import MAX_AUTHOR_CHARS, MAX_QUERY_CHARS
from rag.domain.outcomes import (
    AuthorSource,
)
from rag.domain.ports import (
    LLM,
    Generation,
    GenerationParams,
)
from rag.domain.prompt import (
    build_helper_prompt,
)
from rag.domain.trace import Clock, TraceRecorder, error_dict
from rag.domain.tracing import (
    usage_of,
)
from rag.settings import ModelProfile
from trace_contract import SpanName

SELF_QUERY_MAX_NEW_TOKENS = 48
EXPANSION_MAX_NEW_TOKENS_PER_QUERY = 80
EXPANSION_TEMPERATURE = 0.7
"""Some diversity between phrasings; self-query is greedy (temperature 0)."""
SELF_QUERY_INSTRUCTION = (
    "Extract the full name of the person the user names as the author whose content they want, "
    "for example 'My name is Paul Iusztin and I want a post about...' -> Paul Iusztin. "
    'Answer with JSON {"author_full_name": "<name>"}, or {"author_full_name": null} when the '
    "query names no person."
)
EXPANSION_INSTRUCTION = (
    "Write {n} different versions of the user question inside <query>, to retrieve relevant "
    "documents from a vector database. Different perspectives help overcome the limits of "
    'distance-based similarity search. Answer with JSON {{"queries": [...]}} holding exactly '
    "{n} strings."
)
SELF_QUERY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"author_full_name": {"type": ["string", "null"]}},
    "required": ["author_full_name"],
    "additionalProperties": False,
}


def expansion_schema(n: int) -> dict[str, Any]:
    # An object root rather than a bare array: OpenAI-compatible structured output requires it.
    return {
        "type": "object",
        "properties": {
            "queries": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": n,
                "maxItems": n,
            }
        },
        "required": ["queries"],
        "additionalProperties": False,
    }


_T = TypeVar("_T")


@dataclass(frozen=True)
class _Timed(Generic[_T]):
    """What a helper thread hands back: the pipeline thread records the span."""

    value: _T | None
    error: BaseException | None
    started_at: datetime
    start_perf_s: float
    generation: Generation | None = None


def _timed_call(clock: Clock, call: Callable[[], tuple[_T, Generation]]) -> _Timed[_T]:
    started_at, start_perf_s = clock.now(), clock.perf_s()
    try:
        value, generation = call()
    except BaseException as exc:  # recorded as a fallback by the request thread
        return _Timed(None, exc, started_at, start_perf_s)
    return _Timed(value, None, started_at, start_perf_s, generation)


def run_helpers(
    query: str, deps: Deps, trace: TraceRecorder, *, self_query: bool, expansion: bool
) -> tuple[str | None, AuthorSource, list[str]]:
    """Run the wanted helpers side by side, each bounded by LLM_HELPER_TIMEOUT_S; on any
    failure fall back (no author / no alternatives) and record why."""
    wanted = [
        name
        for name, on in ((SpanName.SELF_QUERY, self_query), (SpanName.QUERY_EXPANSION, expansion))
        if on
    ]
    llm = deps.llm
    if llm is None:
        for name in wanted:
            trace.fallback(name, f"{name} skipped: no LLM configured")
        return None, "none", []

    settings, profile = deps.settings, deps.profile
    timeout_s = settings.llm_helper_timeout_s
    calls: dict[SpanName, Callable[[], tuple[Any, Generation]]] = {}
    if self_query:
        calls[SpanName.SELF_QUERY] = lambda: _extract_author(llm, query, profile, timeout_s)
    if expansion:
        n = settings.expansion_n - 1
        calls[SpanName.QUERY_EXPANSION] = lambda: _expand(llm, query, n, profile, timeout_s)
    submitted_at, submitted_perf_s = deps.clock.now(), deps.clock.perf_s()
    futures: dict[SpanName, Future[_Timed[Any]]] = {
        name: deps.executor.submit(_timed_call, deps.clock, call) for name, call in calls.items()
    }
    wait(futures.values(), timeout=timeout_s)

    author: str | None = None
    author_source: AuthorSource = "none"
    alternatives: list[str] = []
    for name, future in futures.items():
        span = trace.start_span(name, type="llm", input={"query": query})
        if not future.done():
            # A call already running cannot be interrupted; the adapter's own timeout_s (the
            # same helper timeout) ends it soon, and its late result is simply never read.
            future.cancel()
            span.started_at, span.start_perf_s = submitted_at, submitted_perf_s
            error: BaseException = UpstreamTimeout(f"{name} took longer than {timeout_s} s")
            trace.end_span(span, error=error)
            trace.fallback(name)
            continue
        timed = future.result()
        span.started_at, span.start_perf_s = timed.started_at, timed.start_perf_s
        if timed.error is not None:
            obs.logger.warning(f"{name} failed, falling back", error=error_dict(timed.error))
            trace.end_span(span, error=timed.error)
            trace.fallback(name)
            continue
        if timed.generation is not None:
            span.usage = usage_of(
                timed.generation.prompt_tokens, timed.generation.completion_tokens
            )
        if name == SpanName.SELF_QUERY:
            author, note = _accept_author(timed.value, query)
            author_source = "self_query" if author else "none"
            span.output = {"author_full_name": author}
            if note:
                trace.warnings.append(note)
        else:
            alternatives = _distinct_alternatives(
                timed.value or [], query, settings.expansion_n - 1
            )
            span.output = {"queries": alternatives}
        trace.end_span(span)
    return author, author_source, alternatives


def _helper_generate(
    llm: LLM,
    instruction: str,
    query: str,
    profile: ModelProfile,
    params: GenerationParams,
    schema: Mapping[str, Any],
    timeout_s: float,
) -> Generation:
    text, messages = build_helper_prompt(instruction, query, prompt_format=profile.prompt_format)
    if profile.prompt_format == "chat":
        return llm.chat(messages, params, json_schema=schema, timeout_s=timeout_s)
    return llm.complete(text, params, json_schema=schema, timeout_s=timeout_s)


def _parse_json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ModelError(f"{what}: the model did not answer with JSON") from None
    if not isinstance(value, dict):
        raise ModelError(f"{what}: the model did not answer with a JSON object")
    return value


def _extract_author(
    llm: LLM, query: str, profile: ModelProfile, timeout_s: float
) -> tuple[str | None, Generation]:
    params = GenerationParams(max_new_tokens=SELF_QUERY_MAX_NEW_TOKENS, temperature=0.0, top_p=1.0)
    generation = _helper_generate(
        llm, SELF_QUERY_INSTRUCTION, query, profile, params, SELF_QUERY_SCHEMA, timeout_s
    )
    value = _parse_json_object(generation.text, SpanName.SELF_QUERY).get("author_full_name")
    if value is not None and not isinstance(value, str):
        raise ModelError("self_query: author_full_name is not a string")
    return value, generation


_NULLISH = {"", "none", "null", "unknown", "n/a"}


def _accept_author(value: str | None, query: str) -> tuple[str | None, str | None]:
    """The extracted name, cleaned; dropped (with a note) when no part of it is in the query,
    since a filter on a name the model made up would hide every chunk."""
    name = " ".join((value or "").split())[:MAX_AUTHOR_CHARS]
    if name.casefold() in _NULLISH:
        return None, None
    words = [w for w in re.split(r"\W+", name.casefold()) if len(w) > 1]
    if not any(w in query.casefold() for w in words):
        return None, "self_query: ignored an author that the query does not name"
    return name, None


def _expand(
    llm: LLM, query: str, n: int, profile: ModelProfile, timeout_s: float
) -> tuple[list[str], Generation]:
    params = GenerationParams(
        max_new_tokens=EXPANSION_MAX_NEW_TOKENS_PER_QUERY * n,
        temperature=EXPANSION_TEMPERATURE,
        top_p=1.0,
    )
    instruction = EXPANSION_INSTRUCTION.format(n=n)
    generation = _helper_generate(
        llm, instruction, query, profile, params, expansion_schema(n), timeout_s
    )
    queries = _parse_json_object(generation.text, SpanName.QUERY_EXPANSION).get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise ModelError("query_expansion: queries is not a list of strings")
    return queries, generation


def _distinct_alternatives(candidates: Sequence[str], query: str, n: int) -> list[str]:
    seen = {query.casefold()}
    kept: list[str] = []
    for candidate in candidates:
        text = " ".join(candidate.split())[:MAX_QUERY_CHARS]
        if text and text.casefold() not in seen:
            seen.add(text.casefold())
            kept.append(text)
    return kept[:n]
