"""Pipeline outcomes as the API's response bodies (DESIGN 3.1), for every route and stream."""

from __future__ import annotations

from typing import Any

from rag.domain.models import ContextChunk, Filters, RagResponse, RetrieveResponse, Source, Usage
from rag.domain.outcomes import AnswerOutcome, RetrievalOutcome
from rag.domain.ports import Chunk


def source(chunk: Chunk) -> Source:
    return Source(
        id=chunk.id,
        document_id=chunk.document_id,
        collection=chunk.collection,
        author_full_name=chunk.author_full_name,
        platform=chunk.platform,
        link=chunk.link,
        score=chunk.score,
    )


def context_chunk(chunk: Chunk) -> ContextChunk:
    return ContextChunk(**source(chunk).model_dump(), content=chunk.content)


def rag_body(outcome: AnswerOutcome, *, include_context: bool) -> dict[str, Any]:
    return RagResponse(
        answer=outcome.answer,
        sources=[source(c) for c in outcome.sources],
        model=outcome.model,
        usage=Usage(
            prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens
        ),
        trace_id=outcome.trace_id,
        timings_ms=outcome.timings_ms,
        context=[context_chunk(c) for c in outcome.sources] if include_context else None,
    ).to_body()


def retrieval_event_body(outcome: RetrievalOutcome) -> dict[str, Any]:
    """The streamed `retrieval` event: what the answer is based on, before it is written."""
    return {
        "sources": [source(c).model_dump(mode="json") for c in outcome.chunks],
        "filters": Filters(author=outcome.author).model_dump(mode="json"),
        "expanded_queries": outcome.expanded_queries,
        "trace_id": outcome.trace_id,
    }


def retrieve_body(outcome: RetrievalOutcome) -> dict[str, Any]:
    return RetrieveResponse(
        expanded_queries=outcome.expanded_queries,
        filters=Filters(author=outcome.author),
        chunks=[context_chunk(c) for c in outcome.chunks],
        timings_ms=outcome.timings_ms,
        trace_id=outcome.trace_id,
    ).to_body()
