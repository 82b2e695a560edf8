"""Qdrant's embedded local mode (`QdrantClient(path=...)` or ":memory:") as a
`vectorstore.QdrantTransport`: local mode (`make local`, QDRANT_PATH) and tests.

The only bundled module that imports qdrant-client, and nothing imports it but
`QdrantStore.from_settings`, for a path: the Lambda bundle does not carry qdrant-client
(`rag.adapters.qdrant_rest` says why; tests/unit/test_layout.py keeps it so). The searches
arrive as the REST API's JSON and are parsed with qdrant-client's generated models of that same
OpenAPI contract, so the embedded store runs exactly what a server would be sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from qdrant_client import QdrantClient, models

from rag.adapters.vectorstore import CollectionMissing, ScoredPoint
from rag.domain.errors import UpstreamError


class EmbeddedQdrant:
    """Calls in turn: local mode is in-process Python, threads would only contend for the GIL."""

    concurrent = False

    def __init__(self, client: QdrantClient) -> None:
        self._client = client

    @classmethod
    def open(cls, path: str) -> EmbeddedQdrant:
        return cls(
            QdrantClient(location=":memory:") if path == ":memory:" else QdrantClient(path=path)
        )

    def points_count(self, collection: str) -> int | None:
        with _local_errors():
            return self._client.get_collection(collection_name=collection).points_count

    def query_batch(self, collection: str, searches: list[dict[str, Any]]) -> list[ScoredPoint]:
        with _local_errors():
            requests = [models.QueryRequest.model_validate(search) for search in searches]
            responses = self._client.query_batch_points(
                collection_name=collection, requests=requests
            )
        return [
            ScoredPoint(str(point.id), float(point.score), dict(point.payload or {}))
            for response in responses
            for point in response.points
        ]

    def close(self) -> None:
        self._client.close()


@contextmanager
def _local_errors() -> Iterator[None]:
    """Local mode raises ValueError where a server answers 404 / 400."""
    try:
        yield
    except ValueError as exc:
        if "not found" in str(exc):
            raise CollectionMissing(str(exc)) from exc
        raise UpstreamError(f"Qdrant refused the request: {exc}") from None
