"""Answering: the prompt from the retrieved chunks, then one generation, buffered (sized to
the time left) or streamed (stop sequences held back until they can be ruled out)."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import replace

from rag.domain.budget import effective_budget_s, generation_timeout_s, max_new_tokens_within
from rag.domain.deps import Deps
from rag.domain.errors import ModelUnavailable, UpstreamTimeout
from rag.domain.models import RagRequest
from rag.domain.outcomes import (
    AnswerOutcome,
    Conversation,
    RetrievalOutcome,
    TokenEvent,
)
from rag.domain.ports import (
    LLM,
    Generation,
    GenerationParams,
    GenerationStream,
)
from rag.domain.prompt import (
    BuiltPrompt,
    Truncation,
    build_prompt,
    input_budget_tokens,
)
from rag.domain.retrieval import retrieve_chunks
from rag.domain.stops import StopFilter, cut_at_stop
from rag.domain.trace import TraceRecorder
from rag.domain.tracing import (
    params_dict,
    prompt_input,
    usage_of,
)
from rag.settings import ModelProfile
from trace_contract import SpanName

ALPACA_STOP = ("### Instruction:", "### Response:")
"""An alpaca model that starts a new section has finished its answer."""

NO_LLM_MESSAGE = (
    "No LLM is configured. Set LLM_URL to a TGI or OpenAI-compatible server (local mode, e.g. "
    "LLM_URL=http://127.0.0.1:8080 make local), or LLM_ENDPOINT to a SageMaker endpoint name."
)
NO_LLM_RETRY_AFTER_S = 300
"""503s carry Retry-After (DESIGN 3.1); this one lasts until someone configures an LLM."""


def generate_answer(
    req: RagRequest,
    deps: Deps,
    trace: TraceRecorder,
    time_left_s: float | None,
    conversation: Conversation,
) -> AnswerOutcome:
    started_s = deps.clock.perf_s()
    llm, retrieval, built, params = prepare_answer(req, deps, trace, conversation)
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
    with trace.span(SpanName.GENERATE, type="llm", input=prompt_input(built)) as span:
        generation = _generate(llm, built, params, timeout_s)
        text = cut_at_stop(generation.text, params.stop).strip()
        span.output = {"answer": text}
        span.metadata = {
            "finish_reason": generation.finish_reason,
            "params": params_dict(params),
            "timeout_s": timeout_s,
        }
        span.usage = usage_of(generation.prompt_tokens, generation.completion_tokens)
    return answer_outcome(trace, deps, retrieval, built, generation, text)


def prepare_answer(
    req: RagRequest, deps: Deps, trace: TraceRecorder, conversation: Conversation
) -> tuple[LLM, RetrievalOutcome, BuiltPrompt, GenerationParams]:
    """Everything before the generation call, shared by the buffered and the streamed answer."""
    llm = deps.llm
    if llm is None:
        raise ModelUnavailable(
            NO_LLM_MESSAGE, code="llm_not_configured", retry_after_s=NO_LLM_RETRY_AFTER_S
        )
    profile = deps.profile
    retrieval = retrieve_chunks(req, deps, trace)
    params = generation_params(profile, req, conversation.stop)

    with trace.span(SpanName.PROMPT) as span:
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


def answer_outcome(
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


def open_stream(
    llm: LLM, built: BuiltPrompt, params: GenerationParams, stall_timeout_s: float
) -> GenerationStream:
    if built.prompt_format == "chat":
        return llm.stream_chat(list(built.messages), params, stall_timeout_s=stall_timeout_s)
    return llm.stream_complete(built.text, params, stall_timeout_s=stall_timeout_s)


def stream_text(
    stream: GenerationStream,
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


def record_rate(trace: TraceRecorder, generate_ms: float, completion_tokens: int | None) -> None:
    """Tokens per second over the generate span (the model's rate as the client saw it)."""
    if completion_tokens and generate_ms > 0:
        trace.metadata["tokens_per_second"] = round(completion_tokens / (generate_ms / 1000), 2)


def generation_params(
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


def _truncation_note(truncation: Truncation) -> str:
    parts = []
    if truncation.cut_id:
        parts.append(f"cut chunk {truncation.cut_id}")
    if truncation.dropped_ids:
        parts.append(f"dropped {len(truncation.dropped_ids)} lower-ranked chunk(s)")
    if truncation.dropped_turns:
        parts.append(f"dropped the {truncation.dropped_turns} oldest conversation turn(s)")
    return "context truncated to fit the model input: " + ", ".join(parts)
