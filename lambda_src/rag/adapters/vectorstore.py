"""Qdrant behind `ports.VectorStore`: every query vector against every collection, few round trips.

Qdrant batches queries per collection only, so a search costs one `query_batch_points` call per
collection (all query vectors in it); against a server those calls run concurrently. Which
collections exist, and whether they hold points, is cached for a short TTL so the warm path pays
no extra round trip. Failures become the API's error contract (`UpstreamError` / `UpstreamTimeout`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import numpy as np
import numpy.typing as npt
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from rag.domain.errors import UpstreamError, UpstreamTimeout
from rag.domain.ports import COLLECTIONS, Chunk, SearchResult

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

COLLECTION_CACHE_TTL_S = 60.0
"""How long a collection's existence / emptiness is trusted; a fresh ingest shows up after this."""
DEFAULT_TIMEOUT_S = 3.0
AUTHOR_FIELD = "author_full_name"
HTTP_NOT_FOUND = 404


@dataclass(frozen=True)
class _CollectionState:
    exists: bool
    points: int | None  # None: unknown, query it anyway


def author_filter(author: str | None) -> models.Filter | None:
    if author is None:
        return None
    return models.Filter(
        must=[models.FieldCondition(key=AUTHOR_FIELD, match=models.MatchValue(value=author))]
    )


class _CollectionMissing(Exception):
    pass


@contextmanager
def _qdrant_errors(timeout_s: float | None) -> Iterator[None]:
    """Translate client exceptions into the API's errors: a clear sentence, no trace, no secret."""
    try:
        yield
    except UnexpectedResponse as exc:
        if exc.status_code == HTTP_NOT_FOUND:
            raise _CollectionMissing from exc
        raise UpstreamError(
            f"Qdrant answered HTTP {exc.status_code} {exc.reason_phrase}".rstrip()
        ) from None
    except ResponseHandlingException as exc:
        if isinstance(exc.source, httpx.TimeoutException):
            raise UpstreamTimeout(f"Qdrant did not answer within {timeout_s} s") from None
        raise UpstreamError(f"Qdrant is unreachable ({type(exc.source).__name__})") from None
    except httpx.TimeoutException:
        raise UpstreamTimeout(f"Qdrant did not answer within {timeout_s} s") from None
    except httpx.HTTPError as exc:
        raise UpstreamError(f"Qdrant is unreachable ({type(exc).__name__})") from None
    except ValueError as exc:
        # Embedded local mode raises ValueError where a server answers 404 / 400.
        if "not found" in str(exc):
            raise _CollectionMissing from exc
        raise UpstreamError(f"Qdrant refused the request: {exc}") from None


class QdrantStore:
    """`ports.VectorStore` over an injected QdrantClient: server, cloud or embedded local mode."""

    def __init__(
        self,
        client: QdrantClient,
        *,
        timeout_s: float | None = None,
        concurrent: bool = False,
        collection_cache_ttl_s: float = COLLECTION_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._client = client
        self._timeout_s = timeout_s
        self._ttl_s = collection_cache_ttl_s
        self._clock = clock
        self._states: dict[str, tuple[float, _CollectionState]] = {}
        self._lock = threading.Lock()
        # Embedded local mode is in-process Python: threads would only contend for the GIL.
        self._pool = ThreadPoolExecutor(max_workers=len(COLLECTIONS)) if concurrent else None

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
            # The client's HTTP timeout is whole seconds; check_compatibility would cost a round
            # trip at every cold start.
            client = QdrantClient(
                url=url,
                api_key=api_key,
                timeout=math.ceil(timeout_s),
                check_compatibility=False,
            )
            return cls(client, timeout_s=timeout_s, concurrent=True)
        if path:
            local = (
                QdrantClient(location=":memory:") if path == ":memory:" else QdrantClient(path=path)
            )
            return cls(local, timeout_s=timeout_s)
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
        requests = [
            models.QueryRequest(
                query=[float(x) for x in vector],
                filter=author_filter(author),
                limit=limit,
                with_payload=True,
            )
            for vector in np.asarray(vectors, dtype=np.float32)
        ]
        answers = list(self._map(lambda name: self._query(name, requests), searchable))
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

    def _query(
        self, name: str, requests: list[models.QueryRequest]
    ) -> list[models.ScoredPoint] | None:
        """All query vectors against one collection in one call; None when it has vanished."""
        try:
            with _qdrant_errors(self._timeout_s):
                responses = self._client.query_batch_points(collection_name=name, requests=requests)
        except _CollectionMissing:
            self._forget(name)
            return None
        return [point for response in responses for point in response.points]

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
            with _qdrant_errors(self._timeout_s):
                info = self._client.get_collection(collection_name=name)
        except _CollectionMissing:
            return _CollectionState(exists=False, points=0)
        return _CollectionState(exists=True, points=info.points_count)

    def _forget(self, name: str) -> None:
        with self._lock:
            self._states.pop(name, None)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self._client.close()


def _usable(name: str, state: _CollectionState, warnings: list[str]) -> bool:
    if not state.exists:
        warnings.append(f"collection {name} does not exist, skipped")
        return False
    if state.points == 0:
        warnings.append(f"collection {name} is empty, skipped")
        return False
    return True


def _to_chunk(collection: str, point: models.ScoredPoint) -> Chunk:
    payload: dict[str, Any] = dict(point.payload or {})
    return Chunk(
        id=str(point.id),
        collection=collection,
        content=str(payload.get("content", "")),
        score=float(point.score),
        author_full_name=payload.get("author_full_name"),
        platform=payload.get("platform"),
        link=payload.get("link"),
        payload=payload,
    )
