"""The business logic: retrieval (self-query + expansion -> embed -> search -> rerank) and
answering (prompt -> generate), as plain functions of injected adapters (`Deps`): the entry
points here, each job in its own module (retrieval, query_helpers, answering, tracing).

No API Gateway event reaches this module. Every call emits exactly one trace event to
`deps.sink`, after its result (or error) is known; a failing sink is logged and ignored.

Fallbacks (each recorded in `metadata.fallbacks`, with the reason on the span or in warnings):
- `self_query`: the LLM call failed, timed out, returned something unparseable, or there is
  no LLM (retrieve only) -> no author filter.
- `query_expansion`: same causes -> the original query only.
- `rerank`: the cross-encoder failed -> vector-score order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Literal

from rag.domain.answering import (
    answer_outcome,
    generate_answer,
    open_stream,
    prepare_answer,
    record_rate,
    stream_text,
)
from rag.domain.budget import effective_budget_s
from rag.domain.deps import Deps
from rag.domain.errors import ApiError, ClientClosed
from rag.domain.models import RagRequest, RetrieveRequest
from rag.domain.outcomes import (
    NO_CONVERSATION,
    AnswerOutcome,
    Conversation,
    DoneEvent,
    RetrievalEvent,
    RetrievalOutcome,
    StreamEvent,
)
from rag.domain.retrieval import retrieve_chunks
from rag.domain.trace import TraceRecorder
from rag.domain.tracing import (
    params_dict,
    prompt_input,
    send_trace,
    source_summary,
    trace_input,
    usage_of,
)
from trace_contract import SpanName


def retrieve(req: RetrieveRequest, deps: Deps) -> RetrievalOutcome:
    trace = TraceRecorder("retrieve", deps.clock, trace_input(req))
    try:
        outcome = retrieve_chunks(req, deps, trace)
    except BaseException as exc:
        send_trace(deps, trace, error=exc)
        raise
    send_trace(
        deps,
        trace,
        output={
            "expanded_queries": outcome.expanded_queries,
            "chunks": [source_summary(c) for c in outcome.chunks],
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
    trace = TraceRecorder("rag", deps.clock, trace_input(req, conversation))
    try:
        outcome = generate_answer(req, deps, trace, time_left_s, conversation)
    except BaseException as exc:
        send_trace(deps, trace, error=exc)
        raise
    usage = usage_of(outcome.prompt_tokens, outcome.completion_tokens)
    send_trace(
        deps,
        trace,
        output={"answer": outcome.answer, "sources": [source_summary(c) for c in outcome.sources]},
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
    trace = TraceRecorder("rag", deps.clock, {**trace_input(req, conversation), "stream": True})
    outcome: AnswerOutcome | None = None
    try:
        llm, retrieval, built, params = prepare_answer(req, deps, trace, conversation)
        settings = deps.settings
        budget_s = effective_budget_s(settings.stream_budget_s, time_left_s)
        with trace.span(SpanName.GENERATE, type="llm", input=prompt_input(built)) as span:
            stream = open_stream(llm, built, params, settings.llm_stream_stall_s)
            try:
                yield RetrievalEvent(retrieval)
                pieces = yield from stream_text(stream, params, deps, trace, budget_s)
            finally:
                stream.close()
            generation = replace(stream.result(), text="".join(pieces))
            text = generation.text.strip()
            span.output = {"answer": text}
            span.metadata = {
                "finish_reason": generation.finish_reason,
                "params": params_dict(params),
                "stall_timeout_s": settings.llm_stream_stall_s,
                "stream": True,
            }
            span.usage = usage_of(generation.prompt_tokens, generation.completion_tokens)
        outcome = answer_outcome(trace, deps, retrieval, built, generation, text)
        ttft_ms = trace.metadata.get("time_to_first_token_ms")
        if ttft_ms is not None:
            outcome.timings_ms["time_to_first_token"] = ttft_ms
        record_rate(trace, span.duration_ms, generation.completion_tokens)
        yield DoneEvent(outcome)
    except GeneratorExit:
        if outcome is None:  # closed before the end: the client went away
            send_trace(deps, trace, error=ClientClosed("the client closed the stream"))
            return
        raise
    except BaseException as exc:
        send_trace(deps, trace, error=exc)
        raise
    send_trace(
        deps,
        trace,
        output={"answer": outcome.answer, "sources": [source_summary(c) for c in outcome.sources]},
        usage=usage_of(outcome.prompt_tokens, outcome.completion_tokens),
    )


def emit_rejected(name: Literal["rag", "retrieve"], error: ApiError, deps: Deps) -> None:
    """The trace of a request refused before the pipeline ran (bad body, wrong content type)."""
    send_trace(deps, TraceRecorder(name, deps.clock, {}), error=error)
