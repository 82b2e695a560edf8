"""QdrantStore against Qdrant's embedded local mode (real client, real search) and dead servers."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from rag.adapters.qdrant_local import EmbeddedQdrant
from rag.adapters.vectorstore import QdrantStore
from rag.domain.errors import UpstreamError, UpstreamTimeout
from rag.domain.ports import COLLECTIONS

DIM = 8
AUTHORS = ("Paul Iusztin", "Maxime Labonne", "Alex Vesa")
ARTICLES, POSTS, REPOSITORIES = COLLECTIONS


class CountingClient(QdrantClient):
    """The real embedded client, counting the calls that cost a round trip against a server."""

    def __init__(self) -> None:
        super().__init__(location=":memory:")
        self.calls: Counter[str] = Counter()

    def query_batch_points(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["query_batch_points"] += 1
        return super().query_batch_points(*args, **kwargs)

    def get_collection(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["get_collection"] += 1
        return super().get_collection(*args, **kwargs)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    unit: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return unit


def _fill(client: QdrantClient, name: str, vectors: np.ndarray, start_id: int = 0) -> None:
    if not client.collection_exists(name):
        client.create_collection(
            name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)
        )
    points = [
        models.PointStruct(
            id=start_id + i,
            vector=v.tolist(),
            payload={
                "content": f"{name} chunk {start_id + i}",
                "author_full_name": AUTHORS[i % len(AUTHORS)],
                "platform": "medium",
                "link": f"https://example.com/{start_id + i}",
                "document_id": f"doc-{i}",
                "metadata": {"chunk_index": 0},
            },
        )
        for i, v in enumerate(vectors)
    ]
    client.upsert(name, points=points)


@pytest.fixture
def client() -> Iterator[CountingClient]:
    rng = np.random.default_rng(0)
    client = CountingClient()
    for offset, name in enumerate(COLLECTIONS):
        _fill(client, name, _unit(rng, 30), start_id=1000 * offset)
    yield client
    client.close()


def test_author_filter_returns_only_that_author(client: CountingClient) -> None:
    # Given three collections of chunks by three authors
    store = QdrantStore(EmbeddedQdrant(client))
    queries = _unit(np.random.default_rng(1), 2)
    # When searching with an author
    result = store.search(queries, limit=5, author="Maxime Labonne")
    # Then every chunk is hers, from every collection, best score first
    assert result.chunks
    assert {c.author_full_name for c in result.chunks} == {"Maxime Labonne"}
    assert {c.collection for c in result.chunks} == set(COLLECTIONS)
    scores = [c.score for c in result.chunks]
    assert scores == sorted(scores, reverse=True)
    assert result.warnings == []


def test_chunks_carry_the_payload_fields(client: CountingClient) -> None:
    store = QdrantStore(EmbeddedQdrant(client))
    chunk = store.search(_unit(np.random.default_rng(2), 1), limit=1).chunks[0]
    assert chunk.content == f"{chunk.collection} chunk {chunk.id}"
    assert chunk.platform == "medium"
    assert chunk.link == f"https://example.com/{chunk.id}"
    assert chunk.payload["metadata"] == {"chunk_index": 0}


def test_results_of_several_queries_are_deduplicated_keeping_the_best_score(
    client: CountingClient,
) -> None:
    # Given two queries: one exactly a stored vector, one close to it
    stored = client.retrieve(ARTICLES, ids=[0], with_vectors=True)[0].vector
    exact = np.asarray(stored, dtype=np.float32)
    near = exact + 0.05
    near /= np.linalg.norm(near)
    # When both are searched
    result = QdrantStore(EmbeddedQdrant(client)).search(np.stack([exact, near]), limit=10)
    # Then point 0 appears once, with the exact match's score
    ids = [c.id for c in result.chunks]
    assert len(ids) == len(set(ids))
    assert ids[0] == "0"
    assert result.chunks[0].score == pytest.approx(1.0, abs=1e-5)


def test_one_batch_call_per_collection_and_no_state_calls_when_warm(
    client: CountingClient,
) -> None:
    # Given a store and three expanded queries
    store = QdrantStore(EmbeddedQdrant(client))
    queries = _unit(np.random.default_rng(3), 3)
    # When searching twice
    store.search(queries, limit=5)
    cold = dict(client.calls)
    store.search(queries, limit=5, author="Alex Vesa")
    # Then each search made one query_batch_points per collection, and only the first one
    # looked the collections up
    assert cold == {"get_collection": 3, "query_batch_points": 3}
    assert client.calls == {"get_collection": 3, "query_batch_points": 6}


def test_missing_and_empty_collections_are_skipped_with_warnings() -> None:
    # Given only articles with points, an empty posts collection, no repositories collection
    client = CountingClient()
    _fill(client, ARTICLES, _unit(np.random.default_rng(4), 5))
    client.create_collection(
        POSTS, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)
    )
    # When searching everything
    result = QdrantStore(EmbeddedQdrant(client)).search(_unit(np.random.default_rng(5), 2), limit=3)
    # Then articles answer and the other two are named in warnings, not errors
    assert {c.collection for c in result.chunks} == {ARTICLES}
    assert result.warnings == [
        f"collection {POSTS} is empty, skipped",
        f"collection {REPOSITORIES} does not exist, skipped",
    ]
    assert client.calls["query_batch_points"] == 1


def test_a_collection_created_later_is_found_after_the_cache_ttl() -> None:
    # Given a store that has seen no repositories collection
    client, clock = CountingClient(), Clock()
    _fill(client, ARTICLES, _unit(np.random.default_rng(6), 5))
    store = QdrantStore(EmbeddedQdrant(client), collection_cache_ttl_s=60, clock=clock)
    queries = _unit(np.random.default_rng(7), 1)
    store.search(queries, limit=3)
    # When it is created and filled, Then it is searched once the TTL has passed
    _fill(client, REPOSITORIES, _unit(np.random.default_rng(8), 5), start_id=500)
    clock.now = 30
    assert REPOSITORIES not in {c.collection for c in store.search(queries, limit=3).chunks}
    clock.now = 61
    assert REPOSITORIES in {c.collection for c in store.search(queries, limit=3).chunks}


def test_a_collection_deleted_while_cached_becomes_a_warning(client: CountingClient) -> None:
    store = QdrantStore(EmbeddedQdrant(client))
    queries = _unit(np.random.default_rng(9), 1)
    store.search(queries, limit=3)
    client.delete_collection(POSTS)
    result = store.search(queries, limit=3)
    assert result.warnings == [f"collection {POSTS} does not exist, skipped"]
    assert {c.collection for c in result.chunks} == {ARTICLES, REPOSITORIES}


def test_a_query_qdrant_refuses_is_an_upstream_error(client: CountingClient) -> None:
    # Given query vectors of the wrong dimension, When searching, Then an upstream error
    with pytest.raises(UpstreamError, match="Qdrant refused the request"):
        QdrantStore(EmbeddedQdrant(client)).search(np.ones((1, DIM + 1), dtype=np.float32), limit=3)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_qdrant_is_an_upstream_error() -> None:
    # Given a Qdrant URL where nothing listens
    store = QdrantStore.from_settings(url=f"http://127.0.0.1:{_closed_port()}", timeout_s=1)
    # When searching, Then the API's upstream error comes out, with a plain message
    with pytest.raises(UpstreamError) as raised:
        store.search(_unit(np.random.default_rng(10), 1), limit=3)
    assert raised.value.status == 502
    assert "Qdrant is unreachable" in raised.value.message
    assert raised.value.__cause__ is None  # nothing chained into the logs' stack trace


def test_a_silent_qdrant_times_out_with_the_configured_timeout() -> None:
    # Given a server that accepts connections and never answers
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        store = QdrantStore.from_settings(url=f"http://127.0.0.1:{port}", timeout_s=1)
        # When searching, Then an upstream timeout (504) names the timeout
        with pytest.raises(UpstreamTimeout, match="within 1 s"):
            store.search(_unit(np.random.default_rng(11), 1), limit=3)


class _Answer(BaseHTTPRequestHandler):
    status = 500

    def _reply(self) -> None:
        body = b'{"status": {"error": "boom"}, "time": 0.0}'
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _reply

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(params=[500, 404])
def http_qdrant(request: pytest.FixtureRequest) -> Iterator[tuple[int, str]]:
    handler = type("Handler", (_Answer,), {"status": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield request.param, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_server_errors_are_upstream_errors_and_404_means_missing(
    http_qdrant: tuple[int, str],
) -> None:
    status, url = http_qdrant
    store = QdrantStore.from_settings(url=url, timeout_s=2)
    queries = _unit(np.random.default_rng(12), 1)
    if status == 500:
        with pytest.raises(UpstreamError, match="HTTP 500"):
            store.search(queries, limit=3)
    else:
        result = store.search(queries, limit=3)
        assert result.chunks == []
        assert len(result.warnings) == len(COLLECTIONS)
