"""QDRANT_URL means to the REST transport what it meant to qdrant-client.

qdrant-client `qdrant_client/qdrant_remote.py` (1.20): a URL without a port gets `port`, whose
default is 6333 (`QdrantClient(..., port=6333)`); a URL without a scheme is http; the URL's path
is a prefix (`self._prefix = parsed_url.path`) in front of every REST endpoint.
"""

from __future__ import annotations

import pytest

from rag.adapters.qdrant_rest import rest_base_url


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("https://xyz.cloud.qdrant.io", "https://xyz.cloud.qdrant.io:6333"),
        ("https://xyz.cloud.qdrant.io:6333", "https://xyz.cloud.qdrant.io:6333"),
        ("https://qdrant.example.org:443/", "https://qdrant.example.org:443"),
        ("http://127.0.0.1:8080/qdrant/", "http://127.0.0.1:8080/qdrant"),
        ("localhost:6333", "http://localhost:6333"),
        ("http://[::1]", "http://[::1]:6333"),
    ],
)
def test_the_base_url_follows_qdrant_clients_reading(url: str, base: str) -> None:
    assert rest_base_url(url) == base
