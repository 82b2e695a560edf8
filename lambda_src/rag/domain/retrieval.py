"""Retrieval: the LLM helpers (self-query, expansion) -> embed -> search -> rerank -> top k.

Fallbacks (each recorded in `metadata.fallbacks`): `rerank`: the cross-encoder failed ->
vector-score order; the helpers' own in `rag.domain.query_helpers`."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from rag import observability as obs
from rag.domain.deps import Deps
from rag.domain.errors import ModelError
from rag.domain.models import RetrieveRequest
from rag.domain.outcomes import (
    RetrievalOutcome,
)
from rag.domain.ports import (
    Chunk,
)
from rag.domain.query_helpers import run_helpers
from rag.domain.trace import TraceRecorder
from trace_contract import SpanName


def retrieve_chunks(req: RetrieveRequest, deps: Deps, trace: TraceRecorder) -> RetrievalOutcome:
    settings = deps.settings
    run_self_query = req.author is None and settings.self_query_enabled
    run_expansion = req.expand and settings.expansion_n > 1
    author, author_source, alternatives = run_helpers(
        req.query, deps, trace, self_query=run_self_query, expansion=run_expansion
    )
    if req.author is not None:
        author, author_source = req.author, "request"
    trace.metadata.update(author_filter=author, author_source=author_source)
    queries = [req.query, *alternatives]

    with trace.span(SpanName.EMBED, input={"queries": queries}) as span:
        vectors = deps.embedder.embed(queries)
        span.metadata = {"model": deps.embedder.model_id, "dim": deps.embedder.dim}
        span.output = {"vectors": len(vectors)}

    with trace.span(SpanName.SEARCH, input={"queries": len(queries), "author": author}) as span:
        result = deps.store.search(vectors, limit=req.k, author=author)
        span.output = {"candidates": len(result.chunks)}
        span.metadata = {"limit_per_query_and_collection": req.k, "warnings": result.warnings}
    trace.warnings.extend(result.warnings)

    ranked = rerank(req.query, result.chunks, deps, trace, keep=req.k)
    return RetrievalOutcome(
        query=req.query,
        expanded_queries=queries,
        author=author,
        author_source=author_source,
        chunks=top_per_document(ranked, req.k, deps.settings.max_chunks_per_document),
        warnings=list(trace.warnings),
        fallbacks=list(trace.fallbacks),
        trace_id=trace.trace_id,
        timings_ms=trace.timings_ms(),
    )


def rerank(
    query: str, candidates: list[Chunk], deps: Deps, trace: TraceRecorder, *, keep: int
) -> list[Chunk]:
    """Cross-encoder order of the best `max(keep, RERANK_MAX_CANDIDATES)` candidates by vector
    score (`candidates` come best first); the others could not reach the top `keep` anyway."""
    reranker = deps.reranker if deps.settings.rerank_enabled else None
    if reranker is None or not candidates:
        return candidates
    found = len(candidates)
    candidates = top_per_document(
        candidates,
        max(keep, deps.settings.rerank_max_candidates),
        deps.settings.max_chunks_per_document,
    )
    try:
        with trace.span(
            SpanName.RERANK, input={"candidates": len(candidates), "found": found}
        ) as span:
            scores = reranker.score(query, [c.content for c in candidates])
            if len(scores) != len(candidates):
                raise ModelError(f"reranker returned {len(scores)} scores for {len(candidates)}")
            span.metadata = {"model": reranker.model_id}
    except Exception:
        obs.logger.exception("rerank failed, keeping vector order")
        trace.fallback(SpanName.RERANK)
        return candidates
    rescored = [replace(c, score=float(s)) for c, s in zip(candidates, scores, strict=True)]
    ranked = sorted(rescored, key=lambda c: -c.score)
    span.output = {"top": [{"id": c.id, "score": c.score} for c in ranked[:5]]}
    return ranked


def top_per_document(chunks: list[Chunk], n: int, per_document: int) -> list[Chunk]:
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
