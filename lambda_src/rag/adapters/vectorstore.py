"""Qdrant behind `ports.VectorStore`: every query vector against every collection, few round trips.

Qdrant batches queries per collection only, so a search costs one batch query per collection
(all query vectors in it); against a server those calls run concurrently. Which collections
exist, and whether they hold points, is cached for a short TTL so the warm path pays no extra
round trip. Failures become the API's error contract (`UpstreamError` / `UpstreamTimeout`).

How Qdrant is reached is a `QdrantTransport` with two operations: a server speaks Qdrant's REST
API over httpx (`rag.adapters.qdrant_rest`, what the Lambda runs), the embedded local mode goes
through qdrant-client (`rag.adapters.qdrant_local`, local mode and tests only; the Lambda bundle
does not carry qdrant-client). Both are imported by `from_settings`, for the branch that needs them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from rag.domain.ports import COLLECTIONS, Chunk, SearchResult

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

COLLECTION_CACHE_TTL_S = 60.0
"""How long a collection's existence / emptiness is trusted; a fresh ingest shows up after this."""
DEFAULT_TIMEOUT_S = 3.0
AUTHOR_FIELD = "author_full_name"


class ScoredPoint(NamedTuple):
    """One hit of a query, as both transports hand it back."""

    id: str
    score: float
    payload: dict[str, Any]


class CollectionMissing(Exception):
    """The collection does not exist (a server's 404)."""


class QdrantTransport(Protocol):
    """The two Qdrant calls a search needs. Failures raise `CollectionMissing`, or the API's
    `UpstreamError` / `UpstreamTimeout` with a plain sentence (never a key, never a trace)."""

    concurrent: bool
    """Whether calls for several collections should run side by side (a server, yes)."""

    def points_count(self, collection: str) -> int | None:
        """The collection's points (None: unknown, query it anyway)."""
        ...

    def query_batch(self, collection: str, searches: list[dict[str, Any]]) -> list[ScoredPoint]:
        """Every search (a `QueryRequest` of Qdrant's REST API, as JSON) against one
        collection in one call; the hits of all of them, in order."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _CollectionState:
    exists: bool
    points: int | None  # None: unknown, query it anyway


def query_request(
    vector: npt.NDArray[np.float32], *, limit: int, author: str | None
) -> dict[str, Any]:
    """One `QueryRequest` of Qdrant's REST API (OpenAPI schema `QueryRequest`): the nearest
    points to `vector`, with their payloads, of one author when given."""
    request: dict[str, Any] = {"query": vector.tolist(), "limit": limit, "with_payload": True}
    if author is not None:
        request["filter"] = {"must": [{"key": AUTHOR_FIELD, "match": {"value": author}}]}
    return request


class QdrantStore:
    """`ports.VectorStore` over a `QdrantTransport`: server, cloud or embedded local mode."""

    def __init__(
        self,
        transport: QdrantTransport,
        *,
        collection_cache_ttl_s: float = COLLECTION_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._transport = transport
        self._ttl_s = collection_cache_ttl_s
        self._clock = clock
        self._states: dict[str, tuple[float, _CollectionState]] = {}
        self._lock = threading.Lock()
        self._pool = (
            ThreadPoolExecutor(max_workers=len(COLLECTIONS)) if transport.concurrent else None
        )

    @classmethod
    def from_settings(
        cls,
        *,
        url: str | None = None,
        path: str | None = None,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> QdrantStore:
        """A server when `url` is given, else embedded local mode at `path` (":memory:" allowed)."""
        if url:
            from rag.adapters.qdrant_rest import QdrantRest

            return cls(QdrantRest(url, api_key=api_key, timeout_s=timeout_s))
        if path:
            from rag.adapters.qdrant_local import EmbeddedQdrant

            return cls(EmbeddedQdrant.open(path))
        raise ValueError("Qdrant needs a URL (QDRANT_URL) or a local path (QDRANT_PATH)")

    def search(
        self,
        vectors: npt.NDArray[np.float32],
        *,
        limit: int,
        author: str | None = None,
        collections: Sequence[str] = COLLECTIONS,
    ) -> SearchResult:
        warnings: list[str] = []
        searchable = [
            name for name, state in self._states_of(collections) if _usable(name, state, warnings)
        ]
        if len(vectors) == 0 or not searchable:
            return SearchResult(chunks=[], warnings=warnings)
        searches = [
            query_request(vector, limit=limit, author=author)
            for vector in np.asarray(vectors, dtype=np.float32)
        ]
        answers = list(self._map(lambda name: self._query(name, searches), searchable))
        best: dict[str, Chunk] = {}
        for name, points in zip(searchable, answers, strict=True):
            if points is None:
                warnings.append(f"collection {name} does not exist, skipped")
                continue
            for point in points:
                chunk = _to_chunk(name, point)
                if chunk.id not in best or chunk.score > best[chunk.id].score:
                    best[chunk.id] = chunk
        chunks = sorted(best.values(), key=lambda c: (-c.score, c.id))
        return SearchResult(chunks=chunks, warnings=warnings)

    def _query(self, name: str, searches: list[dict[str, Any]]) -> list[ScoredPoint] | None:
        """All query vectors against one collection in one call; None when it has vanished."""
        try:
            return self._transport.query_batch(name, searches)
        except CollectionMissing:
            self._forget(name)
            return None

    def _map(self, func: Callable[[str], _T], names: Sequence[str]) -> Iterator[_T]:
        """One call per collection: concurrently against a server, in turn in local mode."""
        if self._pool is None or len(names) < 2:
            return map(func, names)
        return self._pool.map(func, names)

    def _states_of(self, names: Sequence[str]) -> list[tuple[str, _CollectionState]]:
        """Cached states; the stale ones are fetched (one round trip each, concurrently)."""
        now = self._clock()
        with self._lock:
            cached = {
                name: entry[1]
                for name in names
                if (entry := self._states.get(name)) is not None and now - entry[0] < self._ttl_s
            }
        stale = [name for name in names if name not in cached]
        for name, state in zip(stale, self._map(self._fetch_state, stale), strict=True):
            if not state.exists or state.points == 0:
                logger.warning("qdrant collection %s unusable: %s", name, state)
            cached[name] = state
            with self._lock:
                self._states[name] = (now, state)
        return [(name, cached[name]) for name in names]

    def _fetch_state(self, name: str) -> _CollectionState:
        try:
            return _CollectionState(exists=True, points=self._transport.points_count(name))
        except CollectionMissing:
            return _CollectionState(exists=False, points=0)

    def _forget(self, name: str) -> None:
        with self._lock:
            self._states.pop(name, None)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self._transport.close()


def _usable(name: str, state: _CollectionState, warnings: list[str]) -> bool:
    if not state.exists:
        warnings.append(f"collection {name} does not exist, skipped")
        return False
    if state.points == 0:
        warnings.append(f"collection {name} is empty, skipped")
        return False
    return True


def _to_chunk(collection: str, point: ScoredPoint) -> Chunk:
    payload = point.payload
    return Chunk(
        id=point.id,
        collection=collection,
        content=str(payload.get("content", "")),
        score=point.score,
        author_full_name=payload.get("author_full_name"),
        platform=payload.get("platform"),
        link=payload.get("link"),
        payload=payload,
    )
