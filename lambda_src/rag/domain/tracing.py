"""What a request's trace event carries beyond its spans, and sending it: metrics, then the
sink; a failing sink is logged and ignored."""

from __future__ import annotations

from typing import Any

from rag import observability as obs
from rag.domain.deps import Deps
from rag.domain.errors import ApiError
from rag.domain.models import RagRequest, RetrieveRequest
from rag.domain.outcomes import (
    NO_CONVERSATION,
    Conversation,
)
from rag.domain.ports import (
    COLLECTIONS,
    Chunk,
    GenerationParams,
)
from rag.domain.prompt import (
    BuiltPrompt,
)
from rag.domain.trace import TraceRecorder


def trace_input(
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


def prompt_input(built: BuiltPrompt) -> dict[str, Any]:
    if built.prompt_format == "chat":
        return {"messages": [dict(m) for m in built.messages]}
    return {"prompt": built.text}


def params_dict(params: GenerationParams) -> dict[str, Any]:
    return {
        "max_new_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stop": list(params.stop),
    }


def source_summary(chunk: Chunk) -> dict[str, Any]:
    return {"id": chunk.id, "collection": chunk.collection, "score": chunk.score}


def usage_of(prompt_tokens: int | None, completion_tokens: int | None) -> dict[str, int] | None:
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


def send_trace(
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
