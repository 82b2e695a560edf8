"""The business logic: retrieval (self-query + expansion -> embed -> search -> rerank) and
answering (prompt -> generate), as plain functions of injected adapters (`Deps`).

No API Gateway event reaches this module. Every call emits exactly one trace event to
`deps.sink`, after its result (or error) is known; a failing sink is logged and ignored.

Fallbacks (each recorded in `metadata.fallbacks`, with the reason on the span or in warnings):
- `self_query`: the LLM call failed, timed out, returned something unparseable, or there is
  no LLM (retrieve only) -> no author filter.
- `query_expansion`: same causes -> the original query only.
- `rerank`: the cross-encoder failed -> vector-score order.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from rag import observability as obs
from rag.adapters.llm.stream import StopFilter, TextStream
from rag.domain.budget import generation_timeout_s, max_new_tokens_within
from rag.domain.errors import ApiError, ClientClosed, ModelError, ModelUnavailable, UpstreamTimeout
from rag.domain.models import MAX_AUTHOR_CHARS, MAX_QUERY_CHARS, RagRequest, RetrieveRequest
from rag.domain.ports import (
    COLLECTIONS,
    LLM,
    Chunk,
    Embedder,
    Generation,
    GenerationParams,
    Reranker,
    TraceSink,
    VectorStore,
)
from rag.domain.prompt import (
    BuiltPrompt,
    TokenCounter,
    Truncation,
    Turn,
    Utf8ByteEstimate,
    build_helper_prompt,
    build_prompt,
    input_budget_tokens,
)
from rag.domain.trace import Clock, SystemClock, TraceRecorder, error_dict
from rag.settings import ModelProfile, Settings

HELPER_WORKERS = 4
"""Two helpers per request; spare threads absorb calls still running after a helper timeout."""
SELF_QUERY_MAX_NEW_TOKENS = 48
EXPANSION_MAX_NEW_TOKENS_PER_QUERY = 80
EXPANSION_TEMPERATURE = 0.7
"""Some diversity between phrasings; self-query is greedy (temperature 0)."""
ALPACA_STOP = ("### Instruction:", "### Response:")
"""An alpaca model that starts a new section has finished its answer."""

NO_LLM_MESSAGE = (
    "No LLM is configured. Set LLM_URL to a TGI or OpenAI-compatible server (local mode, e.g. "
    "LLM_URL=http://127.0.0.1:8080 make local), or LLM_ENDPOINT to a SageMaker endpoint name."
)
NO_LLM_RETRY_AFTER_S = 300
INVOCATION_MARGIN_S = 1.0
"""Kept back from the invocation's remaining time for the response and Lambda's own overhead."""
"""503s carry Retry-After (DESIGN 3.1); this one lasts until someone configures an LLM."""
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


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def helper_executor() -> ThreadPoolExecutor:
    """The container's helper pool, created on first use and reused by every request."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(HELPER_WORKERS, thread_name_prefix="llm-helper")
        return _executor


@dataclass(frozen=True)
class Deps:
    settings: Settings
    llm: LLM | None
    embedder: Embedder
    reranker: Reranker | None
    store: VectorStore
    sink: TraceSink
    clock: Clock = field(default_factory=SystemClock)
    executor: Executor = field(default_factory=helper_executor)
    counter: TokenCounter = field(default_factory=Utf8ByteEstimate)

    @property
    def profile(self) -> ModelProfile:
        return self.settings.model_profile


AuthorSource = Literal["request", "self_query", "none"]


@dataclass(frozen=True)
class Conversation:
    """What a chat client adds to a `/rag` request (the OpenAI-compatible route): the earlier
    turns (placed in the prompt by rag.domain.prompt's history rule), its own stop sequences (added to
    the format's) and its end-user id (traced)."""

    history: tuple[Turn, ...] = ()
    stop: tuple[str, ...] = ()
    user: str | None = None


NO_CONVERSATION = Conversation()


@dataclass(frozen=True)
class RetrievalOutcome:
    query: str
    expanded_queries: list[str]
    """The original query first, then the alternatives actually searched."""
    author: str | None
    author_source: AuthorSource
    chunks: list[Chunk]
    warnings: list[str]
    fallbacks: list[str]
    trace_id: str
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class AnswerOutcome:
    answer: str
    sources: list[Chunk]
    """The chunks placed in the prompt (content as placed), best first."""
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    trace_id: str
    timings_ms: dict[str, float]
    retrieval: RetrievalOutcome
    truncation: Truncation | None
    finish_reason: str | None = None
    """The model's: "length" when max_new_tokens ended the answer (TGI and OpenAI say so)."""


@dataclass(frozen=True)
class RetrievalEvent:
    """Streamed first: what the answer will be based on."""

    retrieval: RetrievalOutcome


@dataclass(frozen=True)
class TokenEvent:
    text: str


@dataclass(frozen=True)
class DoneEvent:
    """Streamed last: the same outcome `answer` returns, with `time_to_first_token`."""

    outcome: AnswerOutcome


StreamEvent = RetrievalEvent | TokenEvent | DoneEvent


# --- entry points -----------------------------------------------------------------------------


def retrieve(req: RetrieveRequest, deps: Deps) -> RetrievalOutcome:
    trace = TraceRecorder("retrieve", deps.clock, _trace_input(req))
    try:
        outcome = _retrieve(req, deps, trace)
    except BaseException as exc:
        _finish(deps, trace, error=exc)
        raise
    _finish(
        deps,
        trace,
        output={
            "expanded_queries": outcome.expanded_queries,
            "chunks": [_source_summary(c) for c in outcome.chunks],
        },
    )
    return outcome


def answer(
    req: RagRequest,
    deps: Deps,
    *,
    time_left_s: float | None = None,
    conversation: Conversation = NO_CONVERSATION,
) -> AnswerOutcome:
    """`time_left_s`: what the caller (the Lambda invocation) has left; the request budget is
    never more than that, less a margin, so a first request that paid for the cold start still
    ends inside the Lambda timeout."""
    trace = TraceRecorder("rag", deps.clock, _trace_input(req, conversation))
    try:
        outcome = _answer(req, deps, trace, time_left_s, conversation)
    except BaseException as exc:
        _finish(deps, trace, error=exc)
        raise
    usage = _usage(outcome.prompt_tokens, outcome.completion_tokens)
    _finish(
        deps,
        trace,
        output={"answer": outcome.answer, "sources": [_source_summary(c) for c in outcome.sources]},
        usage=usage,
    )
    return outcome


def answer_stream(
    req: RagRequest,
    deps: Deps,
    *,
    time_left_s: float | None = None,
    conversation: Conversation = NO_CONVERSATION,
) -> Iterator[StreamEvent]:
    """`answer`, streamed: a RetrievalEvent once retrieval is done and the model's stream is
    open, a TokenEvent per piece of text (stop sequences held back until they can be ruled
    out), then a DoneEvent. Failures raise ApiErrors from the generator. Closing the generator
    early (the client went away) closes the model's stream; the trace records it. The trace is
    sent after the last event, so it never delays a token."""
    trace = TraceRecorder("rag", deps.clock, {**_trace_input(req, conversation), "stream": True})
    outcome: AnswerOutcome | None = None
    try:
        llm, retrieval, built, params = _prepare_answer(req, deps, trace, conversation)
        settings = deps.settings
        budget_s = effective_budget_s(settings.stream_budget_s, time_left_s)
        with trace.span("generate", type="llm", input=_prompt_input(built)) as span:
            stream = _open_stream(llm, built, params, settings.llm_stream_stall_s)
            try:
                yield RetrievalEvent(retrieval)
                pieces = yield from _stream_text(stream, params, deps, trace, budget_s)
            finally:
                stream.close()
            generation = replace(stream.result(), text="".join(pieces))
            text = generation.text.strip()
            span.output = {"answer": text}
            span.metadata = {
                "finish_reason": generation.finish_reason,
                "params": _params_dict(params),
                "stall_timeout_s": settings.llm_stream_stall_s,
                "stream": True,
            }
            span.usage = _usage(generation.prompt_tokens, generation.completion_tokens)
        outcome = _answer_outcome(trace, deps, retrieval, built, generation, text)
        ttft_ms = trace.metadata.get("time_to_first_token_ms")
        if ttft_ms is not None:
            outcome.timings_ms["time_to_first_token"] = ttft_ms
        _record_rate(trace, span.duration_ms, generation.completion_tokens)
        yield DoneEvent(outcome)
    except GeneratorExit:
        if outcome is None:  # closed before the end: the client went away
            _finish(deps, trace, error=ClientClosed("the client closed the stream"))
            return
        raise
    except BaseException as exc:
        _finish(deps, trace, error=exc)
        raise
    _finish(
        deps,
        trace,
        output={"answer": outcome.answer, "sources": [_source_summary(c) for c in outcome.sources]},
        usage=_usage(outcome.prompt_tokens, outcome.completion_tokens),
    )


def emit_rejected(name: Literal["rag", "retrieve"], error: ApiError, deps: Deps) -> None:
    """The trace of a request refused before the pipeline ran (bad body, wrong content type)."""
    _finish(deps, TraceRecorder(name, deps.clock, {}), error=error)


# --- retrieval --------------------------------------------------------------------------------


def _retrieve(req: RetrieveRequest, deps: Deps, trace: TraceRecorder) -> RetrievalOutcome:
    settings = deps.settings
    run_self_query = req.author is None and settings.self_query_enabled
    run_expansion = req.expand and settings.expansion_n > 1
    author, author_source, alternatives = _run_helpers(
        req.query, deps, trace, self_query=run_self_query, expansion=run_expansion
    )
    if req.author is not None:
        author, author_source = req.author, "request"
    trace.metadata.update(author_filter=author, author_source=author_source)
    queries = [req.query, *alternatives]

    with trace.span("embed", input={"queries": queries}) as span:
        vectors = deps.embedder.embed(queries)
        span.metadata = {"model": deps.embedder.model_id, "dim": deps.embedder.dim}
        span.output = {"vectors": len(vectors)}

    with trace.span("search", input={"queries": len(queries), "author": author}) as span:
        result = deps.store.search(vectors, limit=req.k, author=author)
        span.output = {"candidates": len(result.chunks)}
        span.metadata = {"limit_per_query_and_collection": req.k, "warnings": result.warnings}
    trace.warnings.extend(result.warnings)

    ranked = _rerank(req.query, result.chunks, deps, trace, keep=req.k)
    return RetrievalOutcome(
        query=req.query,
        expanded_queries=queries,
        author=author,
        author_source=author_source,
        chunks=_top(ranked, req.k, deps.settings.max_chunks_per_document),
        warnings=list(trace.warnings),
        fallbacks=list(trace.fallbacks),
        trace_id=trace.trace_id,
        timings_ms=trace.timings_ms(),
    )


def _rerank(
    query: str, candidates: list[Chunk], deps: Deps, trace: TraceRecorder, *, keep: int
) -> list[Chunk]:
    """Cross-encoder order of the best `max(keep, RERANK_MAX_CANDIDATES)` candidates by vector
    score (`candidates` come best first); the others could not reach the top `keep` anyway."""
    reranker = deps.reranker if deps.settings.rerank_enabled else None
    if reranker is None or not candidates:
        return candidates
    found = len(candidates)
    candidates = _top(
        candidates,
        max(keep, deps.settings.rerank_max_candidates),
        deps.settings.max_chunks_per_document,
    )
    try:
        with trace.span("rerank", input={"candidates": len(candidates), "found": found}) as span:
            scores = reranker.score(query, [c.content for c in candidates])
            if len(scores) != len(candidates):
                raise ModelError(f"reranker returned {len(scores)} scores for {len(candidates)}")
            span.metadata = {"model": reranker.model_id}
    except Exception:
        obs.logger.exception("rerank failed, keeping vector order")
        trace.fallback("rerank")
        return candidates
    rescored = [replace(c, score=float(s)) for c, s in zip(candidates, scores, strict=True)]
    ranked = sorted(rescored, key=lambda c: -c.score)
    span.output = {"top": [{"id": c.id, "score": c.score} for c in ranked[:5]]}
    return ranked


def _top(chunks: list[Chunk], n: int, per_document: int) -> list[Chunk]:
    """The first `n` of `chunks` (best first) with at most `per_document` chunks of any one
    document (0: no limit); when fewer documents than that exist, the best of the held-back
    chunks fill the rest, so `n` chunks still come back."""
    if per_document <= 0:
        return chunks[:n]
    taken: list[Chunk] = []
    held_back: list[Chunk] = []
    counts: Counter[tuple[str, str]] = Counter()
    for chunk in chunks:
        document = (chunk.collection, chunk.document_id or chunk.id)
        if counts[document] < per_document:
            counts[document] += 1
            taken.append(chunk)
            if len(taken) == n:
                break
        else:
            held_back.append(chunk)
    return (taken + held_back)[:n]


# --- LLM helpers (self-query, expansion), concurrently -----------------------------------------

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


def _run_helpers(
    query: str, deps: Deps, trace: TraceRecorder, *, self_query: bool, expansion: bool
) -> tuple[str | None, AuthorSource, list[str]]:
    """Run the wanted helpers side by side, each bounded by LLM_HELPER_TIMEOUT_S; on any
    failure fall back (no author / no alternatives) and record why."""
    wanted = [
        name for name, on in (("self_query", self_query), ("query_expansion", expansion)) if on
    ]
    llm = deps.llm
    if llm is None:
        for name in wanted:
            trace.fallback(name, f"{name} skipped: no LLM configured")
        return None, "none", []

    settings, profile = deps.settings, deps.profile
    timeout_s = settings.llm_helper_timeout_s
    calls: dict[str, Callable[[], tuple[Any, Generation]]] = {}
    if self_query:
        calls["self_query"] = lambda: _extract_author(llm, query, profile, timeout_s)
    if expansion:
        n = settings.expansion_n - 1
        calls["query_expansion"] = lambda: _expand(llm, query, n, profile, timeout_s)
    submitted_at, submitted_perf_s = deps.clock.now(), deps.clock.perf_s()
    futures: dict[str, Future[_Timed[Any]]] = {
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
            span.usage = _usage(timed.generation.prompt_tokens, timed.generation.completion_tokens)
        if name == "self_query":
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
    value = _parse_json_object(generation.text, "self_query").get("author_full_name")
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
    queries = _parse_json_object(generation.text, "query_expansion").get("queries")
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


# --- answering --------------------------------------------------------------------------------


def _answer(
    req: RagRequest,
    deps: Deps,
    trace: TraceRecorder,
    time_left_s: float | None,
    conversation: Conversation,
) -> AnswerOutcome:
    started_s = deps.clock.perf_s()
    llm, retrieval, built, params = _prepare_answer(req, deps, trace, conversation)
    settings = deps.settings
    timeout_s = generation_timeout_s(
        read_timeout_s=settings.llm_read_timeout_s,
        connect_timeout_s=settings.llm_connect_timeout_s,
        request_budget_s=effective_budget_s(settings.request_budget_s, time_left_s),
        elapsed_s=deps.clock.perf_s() - started_s,
    )
    if timeout_s is None:
        raise UpstreamTimeout(
            f"no time left to generate within the {settings.request_budget_s:g} s request budget",
            code="request_budget_exhausted",
        )
    # A buffered answer must finish inside the timeout: ask the model for no more tokens than
    # it can produce in that time at the configured speed (the streamed route is not clamped).
    affordable = max_new_tokens_within(timeout_s, settings.generation_tokens_per_s)
    if params.max_new_tokens > affordable:
        trace.metadata["max_new_tokens_clamped"] = {
            "asked": params.max_new_tokens,
            "allowed": affordable,
        }
        params = replace(params, max_new_tokens=affordable)
    with trace.span("generate", type="llm", input=_prompt_input(built)) as span:
        generation = _generate(llm, built, params, timeout_s)
        text = _cut_at_stop(generation.text, params.stop).strip()
        span.output = {"answer": text}
        span.metadata = {
            "finish_reason": generation.finish_reason,
            "params": _params_dict(params),
            "timeout_s": timeout_s,
        }
        span.usage = _usage(generation.prompt_tokens, generation.completion_tokens)
    return _answer_outcome(trace, deps, retrieval, built, generation, text)


def _prepare_answer(
    req: RagRequest, deps: Deps, trace: TraceRecorder, conversation: Conversation
) -> tuple[LLM, RetrievalOutcome, BuiltPrompt, GenerationParams]:
    """Everything before the generation call, shared by the buffered and the streamed answer."""
    llm = deps.llm
    if llm is None:
        raise ModelUnavailable(
            NO_LLM_MESSAGE, code="llm_not_configured", retry_after_s=NO_LLM_RETRY_AFTER_S
        )
    profile = deps.profile
    retrieval = _retrieve(req, deps, trace)
    params = _generation_params(profile, req, conversation.stop)

    with trace.span("prompt") as span:
        budget = input_budget_tokens(
            max_input_tokens=profile.max_input_tokens,
            max_total_tokens=profile.max_total_tokens,
            max_new_tokens=params.max_new_tokens,
        )
        built = build_prompt(
            req.query,
            retrieval.chunks,
            prompt_format=profile.prompt_format,
            budget_tokens=budget,
            counter=deps.counter,
            history=conversation.history,
        )
        span.output = {"estimated_tokens": built.estimated_tokens, "chunks": len(built.chunks)}
        if conversation.history:
            span.output["history_turns"] = built.history_turns
        span.metadata = {"budget_tokens": budget, "counter": deps.counter.name}
        if built.truncation is not None:
            span.metadata["truncation"] = built.truncation.as_dict()
    if built.truncation is not None:
        trace.metadata["truncation"] = built.truncation.as_dict()
        trace.warnings.append(_truncation_note(built.truncation))
    return llm, retrieval, built, params


def _answer_outcome(
    trace: TraceRecorder,
    deps: Deps,
    retrieval: RetrievalOutcome,
    built: BuiltPrompt,
    generation: Generation,
    text: str,
) -> AnswerOutcome:
    prompt_tokens = generation.prompt_tokens
    if prompt_tokens is None:  # TGI /generate does not report it: use our (over-)estimate
        prompt_tokens = built.estimated_tokens
        trace.metadata["prompt_tokens_estimated"] = True
    return AnswerOutcome(
        answer=text,
        sources=list(built.chunks),
        model=deps.profile.model_id,
        prompt_tokens=prompt_tokens,
        completion_tokens=generation.completion_tokens,
        trace_id=trace.trace_id,
        timings_ms=trace.timings_ms(),
        retrieval=replace(retrieval, warnings=list(trace.warnings)),
        truncation=built.truncation,
        finish_reason=generation.finish_reason,
    )


def _open_stream(
    llm: LLM, built: BuiltPrompt, params: GenerationParams, stall_timeout_s: float
) -> TextStream:
    if built.prompt_format == "chat":
        return llm.stream_chat(list(built.messages), params, stall_timeout_s=stall_timeout_s)
    return llm.stream_complete(built.text, params, stall_timeout_s=stall_timeout_s)


def _stream_text(
    stream: TextStream,
    params: GenerationParams,
    deps: Deps,
    trace: TraceRecorder,
    budget_s: float | None,
) -> Generator[TokenEvent, None, list[str]]:
    """Yields a TokenEvent per piece of text that is certainly not part of a stop sequence;
    returns the pieces sent. Ends the stream at a stop sequence or when the budget is spent."""
    stop = StopFilter(params.stop)
    sent: list[str] = []
    deadline_s = None if budget_s is None else trace.start_perf_s + budget_s
    for piece in stream:
        text = stop.feed(piece)
        if text:
            if not sent:
                trace.metadata["time_to_first_token_ms"] = round(trace.elapsed_ms(), 3)
            sent.append(text)
            yield TokenEvent(text)
        if stop.stopped:
            return sent
        if deadline_s is not None and deps.clock.perf_s() > deadline_s:
            raise UpstreamTimeout(
                f"the answer did not finish within the {budget_s:g} s streaming budget",
                code="stream_budget_exhausted",
            )
    tail = stop.flush()
    if tail:
        if not sent:
            trace.metadata["time_to_first_token_ms"] = round(trace.elapsed_ms(), 3)
        sent.append(tail)
        yield TokenEvent(tail)
    return sent


def _record_rate(trace: TraceRecorder, generate_ms: float, completion_tokens: int | None) -> None:
    """Tokens per second over the generate span (the model's rate as the client saw it)."""
    if completion_tokens and generate_ms > 0:
        trace.metadata["tokens_per_second"] = round(completion_tokens / (generate_ms / 1000), 2)


def effective_budget_s(configured_s: float | None, time_left_s: float | None) -> float | None:
    if time_left_s is None:
        return configured_s
    left_s = time_left_s - INVOCATION_MARGIN_S
    return left_s if configured_s is None else min(configured_s, left_s)


def _generation_params(
    profile: ModelProfile, req: RagRequest, extra_stop: Sequence[str] = ()
) -> GenerationParams:
    defaults, asked = profile.generation, req.generation
    max_new_tokens = defaults.max_new_tokens
    temperature, top_p = defaults.temperature, defaults.top_p
    if asked is not None:
        max_new_tokens = asked.max_new_tokens or max_new_tokens
        temperature = asked.temperature if asked.temperature is not None else temperature
        top_p = asked.top_p if asked.top_p is not None else top_p
    return GenerationParams(
        max_new_tokens=min(max_new_tokens, defaults.max_new_tokens_limit),
        temperature=temperature,
        top_p=top_p,
        stop=(*(ALPACA_STOP if profile.prompt_format == "alpaca" else ()), *extra_stop),
    )


def _generate(
    llm: LLM, built: BuiltPrompt, params: GenerationParams, timeout_s: float
) -> Generation:
    if built.prompt_format == "chat":
        return llm.chat(list(built.messages), params, timeout_s=timeout_s)
    return llm.complete(built.text, params, timeout_s=timeout_s)


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """TGI returns the stop sequence that ended generation as part of the text."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def _truncation_note(truncation: Truncation) -> str:
    parts = []
    if truncation.cut_id:
        parts.append(f"cut chunk {truncation.cut_id}")
    if truncation.dropped_ids:
        parts.append(f"dropped {len(truncation.dropped_ids)} lower-ranked chunk(s)")
    if truncation.dropped_turns:
        parts.append(f"dropped the {truncation.dropped_turns} oldest conversation turn(s)")
    return "context truncated to fit the model input: " + ", ".join(parts)


# --- trace plumbing ---------------------------------------------------------------------------


def _trace_input(
    req: RetrieveRequest, conversation: Conversation = NO_CONVERSATION
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "query": req.query,
        "k": req.k,
        "author": req.author,
        "expand": req.expand,
    }
    if conversation.history:
        data["history_turns"] = len(conversation.history)
    if conversation.user is not None:
        data["user"] = conversation.user
    if isinstance(req, RagRequest) and req.generation is not None:
        data["generation"] = req.generation.model_dump(exclude_none=True)
    return data


def _prompt_input(built: BuiltPrompt) -> dict[str, Any]:
    if built.prompt_format == "chat":
        return {"messages": [dict(m) for m in built.messages]}
    return {"prompt": built.text}


def _params_dict(params: GenerationParams) -> dict[str, Any]:
    return {
        "max_new_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stop": list(params.stop),
    }


def _source_summary(chunk: Chunk) -> dict[str, Any]:
    return {"id": chunk.id, "collection": chunk.collection, "score": chunk.score}


def _usage(prompt_tokens: int | None, completion_tokens: int | None) -> dict[str, int] | None:
    """Opik-style usage with only the counts we know; total only when both are known."""
    usage = {
        key: value
        for key, value in (
            ("prompt_tokens", prompt_tokens),
            ("completion_tokens", completion_tokens),
        )
        if value is not None
    }
    if len(usage) == 2:
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage or None


def _static_metadata(deps: Deps) -> dict[str, Any]:
    settings, profile = deps.settings, deps.profile
    reranker = deps.reranker if settings.rerank_enabled else None
    return {
        "model_id": profile.model_id,
        "model_revision": profile.revision,
        "endpoint": deps.llm.description if deps.llm is not None else None,
        "inference_component": settings.llm_inference_component,
        "embedding_model": deps.embedder.model_id,
        "reranker_model": reranker.model_id if reranker is not None else None,
        "collections": list(COLLECTIONS),
        "prompt_format": profile.prompt_format,
        "config": {
            "expansion_n": settings.expansion_n,
            "self_query_enabled": settings.self_query_enabled,
            "rerank_enabled": settings.rerank_enabled,
            "helper_timeout_s": settings.llm_helper_timeout_s,
        },
    }


def _finish(
    deps: Deps,
    trace: TraceRecorder,
    *,
    output: dict[str, Any] | None = None,
    usage: dict[str, int] | None = None,
    error: BaseException | None = None,
) -> None:
    """Record metrics and hand the trace event to the sink; never raises."""
    status = 200 if error is None else (error.status if isinstance(error, ApiError) else 500)
    try:
        trace.metadata = {
            **_static_metadata(deps),
            "k": trace.input.get("k"),
            **trace.metadata,
        }
        event = trace.event(
            status=status,
            output=output,
            error=error,
            usage=usage,
            tags=[trace.name, deps.profile.name],
        )
        for span in trace.spans:
            obs.record_stage_latency(span.name, span.duration_ms)
        obs.record_stage_latency("total", trace.elapsed_ms())
        for name in trace.fallbacks:
            obs.record_fallback(name)
        if usage is not None:
            obs.record_tokens(usage.get("prompt_tokens"), usage.get("completion_tokens"))
        deps.sink.send(event)
    except Exception:
        obs.logger.exception("trace event not sent", trace_id=trace.trace_id)
