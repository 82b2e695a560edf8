"""The REST transport (`rag.adapters.qdrant_rest`, what the Lambda runs) against a Qdrant REST
server on loopback (`devkit.fakes.qdrant_server.QdrantFake`), side by side with the embedded
local mode over the very same points.

The contract is Qdrant's OpenAPI as qdrant-client's generated REST client speaks it
(qdrant-client `qdrant_client/http/api/collections_api.py` `get_collection`:
`GET /collections/{collection_name}`; `search_api.py` `query_batch_points`:
`POST /collections/{collection_name}/points/query/batch` with a `QueryRequestBatch`, answered
`{"result": [QueryResponse], "status", "time"}`). The fake parses every body with those
generated models (`extra="forbid"`), so a body a server would refuse fails here too. Keys: a
server with `service.api_key` wants the header `api-key: <key>` on every request
(https://qdrant.tech/documentation/guides/security/, "Authentication").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from devkit.fakes.qdrant_server import QdrantFake, QdrantFault
from rag.adapters.qdrant_local import EmbeddedQdrant
from rag.adapters.qdrant_rest import QdrantRest
from rag.adapters.vectorstore import QdrantStore
from rag.domain.errors import UpstreamError, UpstreamTimeout
from rag.domain.ports import COLLECTIONS, SearchResult
from tests.integration.test_vectorstore_local import DIM, _fill, _unit

ARTICLES, POSTS, REPOSITORIES = COLLECTIONS
KEY = "qdrant-rest-test-key-0123456789"
TIMEOUT_S = 2.0
"""Generous for a loopback fake; only the hang test uses a shorter one."""
HANG_S = 5.0
"""Longer than any timeout here; the fake wakes early when it stops."""


@pytest.fixture(scope="module")
def backend() -> Iterator[QdrantClient]:
    """The points of tests/integration/test_vectorstore_local.py: 30 per collection, 3 authors."""
    rng = np.random.default_rng(0)
    client = QdrantClient(location=":memory:")
    for offset, name in enumerate(COLLECTIONS):
        _fill(client, name, _unit(rng, 30), start_id=1000 * offset)
    yield client
    client.close()


@pytest.fixture
def fake(backend: QdrantClient) -> Iterator[QdrantFake]:
    with QdrantFake(backend) as server:
        yield server


@pytest.fixture
def keyed(backend: QdrantClient) -> Iterator[QdrantFake]:
    with QdrantFake(backend, api_key=KEY) as server:
        yield server


def rest_store(
    url: str, *, api_key: str | None = None, timeout_s: float = TIMEOUT_S
) -> QdrantStore:
    return QdrantStore.from_settings(url=url, api_key=api_key, timeout_s=timeout_s)


def as_rows(result: SearchResult) -> list[tuple[str, str, dict[str, object]]]:
    return [(c.id, c.collection, dict(c.payload)) for c in result.chunks]


def assert_same_chunks(over_rest: SearchResult, local: SearchResult) -> None:
    """Same points, payloads and order; scores to float32 precision: local mode's own float32
    arithmetic is not bit-for-bit repeatable (two local-mode searches of the same vectors on the
    same points can differ in the last bits)."""
    assert as_rows(over_rest) == as_rows(local)
    assert [c.score for c in over_rest.chunks] == pytest.approx(
        [c.score for c in local.chunks], rel=1e-6
    )


@pytest.mark.parametrize("author", [None, "Maxime Labonne"], ids=["all", "author"])
def test_rest_and_local_mode_return_the_same_chunks(
    backend: QdrantClient, fake: QdrantFake, author: str | None
) -> None:
    # Given the same points behind a REST server and in local mode, and three query vectors
    queries = _unit(np.random.default_rng(1), 3)
    # When both stores search them
    over_rest = rest_store(fake.url).search(queries, limit=5, author=author)
    local = QdrantStore(EmbeddedQdrant(backend)).search(queries, limit=5, author=author)
    # Then they return the same chunks (ids, collections, payloads, scores) in the same order
    assert over_rest.chunks
    assert_same_chunks(over_rest, local)
    assert over_rest.warnings == local.warnings == []
    if author is not None:
        assert {c.author_full_name for c in over_rest.chunks} == {author}


def test_missing_and_empty_collections_are_the_same_warnings_over_rest() -> None:
    # Given articles with points, an empty posts collection and no repositories collection
    backend = QdrantClient(location=":memory:")
    _fill(backend, ARTICLES, _unit(np.random.default_rng(4), 5))
    backend.create_collection(
        POSTS, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)
    )
    queries = _unit(np.random.default_rng(5), 2)
    with QdrantFake(backend) as server:
        # When searching everything over REST and in local mode
        over_rest = rest_store(server.url).search(queries, limit=3)
        calls = server.calls
    local = QdrantStore(EmbeddedQdrant(backend)).search(queries, limit=3)
    backend.close()
    # Then both skip the same two collections with the same warnings, and articles answer
    assert_same_chunks(over_rest, local)
    assert {c.collection for c in over_rest.chunks} == {ARTICLES}
    assert over_rest.warnings == local.warnings
    assert over_rest.warnings == [
        f"collection {POSTS} is empty, skipped",
        f"collection {REPOSITORIES} does not exist, skipped",
    ]
    # And only the collection with points was queried
    assert [c.path for c in calls if c.method == "POST"] == [
        f"/collections/{ARTICLES}/points/query/batch"
    ]


def test_the_request_bodies_are_qdrant_query_request_batches(fake: QdrantFake) -> None:
    # When searching two vectors for one author
    rest_store(fake.url).search(_unit(np.random.default_rng(2), 2), limit=4, author="Alex Vesa")
    # Then one GET per collection, one POST per collection, each body a QueryRequestBatch with
    # both vectors, the limit, payloads and the author filter (a match on author_full_name)
    gets = sorted(c.path for c in fake.calls if c.method == "GET")
    posts = [c for c in fake.calls if c.method == "POST"]
    assert gets == sorted(f"/collections/{name}" for name in COLLECTIONS)
    assert sorted(c.path for c in posts) == sorted(
        f"/collections/{name}/points/query/batch" for name in COLLECTIONS
    )
    for call in posts:
        batch = models.QueryRequestBatch.model_validate(call.body)
        assert len(batch.searches) == 2
        for search in batch.searches:
            assert search.limit == 4
            assert search.with_payload is True
            assert search.filter == models.Filter(
                must=[
                    models.FieldCondition(
                        key="author_full_name", match=models.MatchValue(value="Alex Vesa")
                    )
                ]
            )


def test_the_fake_refuses_a_body_qdrant_would_refuse(fake: QdrantFake) -> None:
    """The fake's validation is live: a field QueryRequest does not have is a 400 as on a
    server ("Format error in JSON body"), so the parity tests above prove the bodies valid."""
    body = {"searches": [{"query": [0.1] * DIM, "limit": 3, "with_payloads": True}]}
    answer = httpx.post(f"{fake.url}/collections/{ARTICLES}/points/query/batch", json=body)
    assert answer.status_code == 400
    assert answer.json()["status"]["error"].startswith("Format error in JSON body")


def test_the_connection_is_kept_alive_across_searches(fake: QdrantFake) -> None:
    # Given a store that has searched once (its connections opened)
    store = rest_store(fake.url)
    queries = _unit(np.random.default_rng(3), 1)
    store.search(queries, limit=3)
    first = {c.client_port for c in fake.calls}
    # When searching again (states cached: only the query batches)
    store.search(queries, limit=3)
    again = {c.client_port for c in fake.calls[-len(COLLECTIONS) :]}
    # Then the pooled client sent them over connections it already had
    assert again <= first


def test_a_collection_deleted_on_the_server_is_skipped_with_its_warning(fake: QdrantFake) -> None:
    # Given a warm store, then the posts collection answering 404
    store = rest_store(fake.url)
    queries = _unit(np.random.default_rng(6), 1)
    store.search(queries, limit=3)
    fake.set_fault(QdrantFault.missing(POSTS))
    # When searching, Then posts is a warning and the others still answer
    result = store.search(queries, limit=3)
    assert result.warnings == [f"collection {POSTS} does not exist, skipped"]
    assert {c.collection for c in result.chunks} == {ARTICLES, REPOSITORIES}


@pytest.mark.parametrize("status", [500, 503])
def test_a_server_error_is_an_upstream_error_naming_the_status(
    fake: QdrantFake, status: int
) -> None:
    fake.set_fault(QdrantFault.http_status(status))
    with pytest.raises(UpstreamError, match=f"Qdrant answered HTTP {status}") as raised:
        rest_store(fake.url).search(_unit(np.random.default_rng(7), 1), limit=3)
    assert raised.value.status == 502
    assert raised.value.__cause__ is None


def test_a_hanging_server_is_an_upstream_timeout(fake: QdrantFake) -> None:
    # Given a server that accepts and then answers only after HANG_S
    fake.set_fault(QdrantFault.slow(HANG_S))
    # When searching with a shorter timeout, Then an upstream timeout (504) naming it
    with pytest.raises(UpstreamTimeout, match=r"within 0\.5 s") as raised:
        rest_store(fake.url, timeout_s=0.5).search(_unit(np.random.default_rng(8), 1), limit=3)
    assert raised.value.status == 504


def test_a_server_gone_is_an_upstream_error(fake: QdrantFake) -> None:
    fake.down()
    with pytest.raises(UpstreamError, match="Qdrant is unreachable"):
        rest_store(fake.url).search(_unit(np.random.default_rng(9), 1), limit=3)


def test_the_api_key_is_sent_on_every_request(keyed: QdrantFake) -> None:
    # Given a server that wants the key, When searching with it, Then every call carried it
    result = rest_store(keyed.url, api_key=KEY).search(_unit(np.random.default_rng(10), 1), limit=3)
    assert result.chunks
    assert keyed.calls
    assert {c.api_key for c in keyed.calls} == {KEY}


def test_no_api_key_header_without_a_key(fake: QdrantFake) -> None:
    rest_store(fake.url).search(_unit(np.random.default_rng(11), 1), limit=3)
    assert fake.calls
    assert {c.api_key for c in fake.calls} == {None}


@pytest.mark.parametrize("sent", [None, "wrong-key-9876543210"], ids=["none", "wrong"])
def test_a_refused_key_is_an_upstream_error_that_shows_no_key(
    keyed: QdrantFake, sent: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a server that wants KEY, When the store sends none or another key
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UpstreamError, match="HTTP 401") as raised:
        rest_store(keyed.url, api_key=sent).search(_unit(np.random.default_rng(12), 1), limit=3)
    # Then the error names the status, and neither it nor the logs show a key
    for key in filter(None, (KEY, sent)):
        assert key not in raised.value.message
        assert key not in caplog.text


def test_a_hanging_server_does_not_show_the_key(fake: QdrantFake) -> None:
    fake.set_fault(QdrantFault.slow(HANG_S))
    with pytest.raises(UpstreamTimeout) as raised:
        rest_store(fake.url, api_key=KEY, timeout_s=0.5).search(
            _unit(np.random.default_rng(13), 1), limit=3
        )
    assert KEY not in raised.value.message


def test_a_body_that_is_not_qdrants_is_an_upstream_error() -> None:
    """A 200 from something that is not Qdrant (a proxy's page) is not an empty result."""
    http = httpx.Client(
        base_url="http://qdrant.test:6333",
        transport=httpx.MockTransport(lambda request: httpx.Response(200, text="<html>ok</html>")),
    )
    store = QdrantStore(QdrantRest("http://qdrant.test", timeout_s=1, client=http))
    with pytest.raises(UpstreamError, match="not Qdrant's REST response"):
        store.search(_unit(np.random.default_rng(14), 1), limit=3)
