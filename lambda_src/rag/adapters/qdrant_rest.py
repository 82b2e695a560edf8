"""The business Lambda's Qdrant client: two calls of Qdrant's REST API over httpx.

Why not qdrant-client, the library that exists for this: measured on the benchmark machine,
`import qdrant_client` was ~1.4 s of the business Lambda's ~3.0 s cold init (its
`qdrant_client.http` package rebuilds the forward references of every generated pydantic model
at import, ~0.5 s, after ~0.3 s defining them, and it imports grpc), and qdrant-client with
what only it needed (grpcio, portalocker, h2) was 25 MB of the bundle (x86_64: 189.7 MB with
it, 164.2 MB without). A search needs two endpoints, so
they are spoken here as Qdrant's OpenAPI contract defines them (the same contract
qdrant-client's generated `http/api/collections_api.py` and `search_api.py` call):

    GET  /collections/{name}                 -> {"result": {"points_count": int | null, ...}}
    POST /collections/{name}/points/query/batch  {"searches": [QueryRequest, ...]}
                                             -> {"result": [{"points": [ScoredPoint, ...]}, ...]}

Authentication is the `api-key` header (https://qdrant.tech/documentation/guides/security/).
One pooled `httpx.Client` serves every request, so the warm path reuses its kept-alive
connections. The embedded local mode still goes through qdrant-client (`qdrant_local`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from rag.adapters.vectorstore import CollectionMissing, ScoredPoint
from rag.domain.errors import UpstreamError, UpstreamTimeout

QDRANT_REST_PORT = 6333
"""Qdrant's REST port: where qdrant-client goes when QDRANT_URL names none, so the setting keeps
its meaning (`QdrantClient(url=...)`, `port=6333`)."""
HTTP_NOT_FOUND = 404


def rest_base_url(url: str) -> str:
    """QDRANT_URL as qdrant-client reads it: no scheme is http, no port is 6333, a path is a
    prefix in front of every endpoint."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    netloc = parts.netloc if parts.port else f"{parts.netloc}:{QDRANT_REST_PORT}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class QdrantRest:
    """`vectorstore.QdrantTransport` against a Qdrant server or Qdrant Cloud."""

    concurrent = True

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float,
        client: httpx.Client | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._http = client or httpx.Client(
            base_url=rest_base_url(url),
            headers={"api-key": api_key} if api_key else None,
            timeout=timeout_s,
        )

    def points_count(self, collection: str) -> int | None:
        result = self._call("GET", f"/collections/{quote(collection, safe='')}")
        try:
            count = result["points_count"]
            return None if count is None else int(count)
        except (KeyError, TypeError, ValueError):
            raise _unexpected_body() from None

    def query_batch(self, collection: str, searches: list[dict[str, Any]]) -> list[ScoredPoint]:
        result = self._call(
            "POST",
            f"/collections/{quote(collection, safe='')}/points/query/batch",
            {"searches": searches},
        )
        try:
            return [
                ScoredPoint(
                    str(point["id"]), float(point["score"]), dict(point.get("payload") or {})
                )
                for response in result
                for point in response["points"]
            ]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise _unexpected_body() from None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The `result` of Qdrant's answer envelope; failures as the API's errors."""
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"Qdrant did not answer within {self._timeout_s} s") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"Qdrant is unreachable ({type(exc).__name__})") from None
        if response.status_code == HTTP_NOT_FOUND:
            raise CollectionMissing(path)
        if not response.is_success:
            raise UpstreamError(
                f"Qdrant answered HTTP {response.status_code} {response.reason_phrase}".rstrip()
            )
        try:
            return response.json()["result"]
        except (ValueError, KeyError, TypeError):
            raise _unexpected_body() from None

    def close(self) -> None:
        self._http.close()


def _unexpected_body() -> UpstreamError:
    return UpstreamError("Qdrant answered a body that is not Qdrant's REST response")
