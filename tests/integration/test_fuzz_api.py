"""The HTTP API fuzzed from its own OpenAPI description (docs/openapi.json).

schemathesis generates valid and invalid bodies for every operation and sends them over HTTP to
the local server's front (`tools.local_server.LocalServer` + the Lambda's app) on the real
adapters: tiny ONNX models, embedded Qdrant with part of the sample corpus, the TGI fake. Every
response must be a documented status, never a 500, errors in the contract's shape, 2xx bodies
valid against the response schema. Hypothesis adds bodies that are not JSON objects at all.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qdrant_client import QdrantClient
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from devkit.fakes.tgi_server import TgiServer
from devkit.tiny_models import build_cross_encoder, build_embedder
from feature.chunking import Chunker
from feature.ingest import ingest_file
from rag.adapters.onnx_models import OnnxEmbedder
from rag.settings import Settings
from rag.wiring import build_deps
from tests.integration.test_local_server import CORPUS, twin_responder
from tools import openapi
from tools.local_server import LocalServer, local_app
from web.app import OPENAI_ROUTES, ROUTE_METHODS

MAX_EXAMPLES = 100
"""Per operation; with shrinking off a failing case is reported as found."""
CORPUS_LINES = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,  # no wall-clock judgement; the server's own timeouts bound each call
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SCHEMA = schemathesis.openapi.from_path(openapi.OUTPUT)
SCHEMA.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    no_shrink=True,
    # The API key is API Gateway's (tests/integration/test_local_server.py covers it); the
    # handler behind it is what is fuzzed here.
    with_security_parameters=False,
)
CASES: Counter[str] = Counter()


def test_the_committed_description_is_generated_from_the_models() -> None:
    # Given the models as they are, then docs/openapi.json is what the generator writes
    assert openapi.OUTPUT.read_text(encoding="utf-8") == openapi.render(), (
        "docs/openapi.json is stale: run `python -m tools.openapi`"
    )
    assert openapi.main(["--check"]) == 0


def test_the_description_covers_every_route_and_error_status() -> None:
    document = json.loads(openapi.OUTPUT.read_text(encoding="utf-8"))
    # The OpenAI-compatible routes follow OpenAI's API reference (tests/integration/test_openai_compat.py)
    own_routes = {p: m for p, m in ROUTE_METHODS.items() if p not in OPENAI_ROUTES}
    assert {
        path: tuple(m.upper() for m in ops) for path, ops in document["paths"].items()
    } == own_routes
    rag = document["paths"]["/rag"]["post"]["responses"]
    assert {"200", "400", "413", "415", "429", "502", "503", "504"} <= set(rag)
    assert set(rag["503"]["headers"]) == {"Retry-After"}
    query = document["components"]["schemas"]["RagRequest"]["properties"]["query"]
    assert query["minLength"] == 1
    assert "2000 characters" in query["description"]


# --------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz")
    embedding = build_embedder(root / "embedding")
    reranker = build_cross_encoder(root / "reranker")
    corpus = root / "corpus.jsonl"
    lines = CORPUS.read_text(encoding="utf-8").splitlines(keepends=True)[:CORPUS_LINES]
    corpus.write_text("".join(lines), encoding="utf-8")
    embedder = OnnxEmbedder(embedding, threads=1)
    store = QdrantClient(path=str(root / "qdrant"))
    chunker = Chunker(embedder.tokenizer, max_length=embedder.max_length)
    ingest_file(corpus, client=store, embedder=embedder, chunker=chunker)
    store.close()
    with TgiServer(twin_responder) as tgi:
        settings = Settings.from_env(
            {
                "QDRANT_PATH": str(root / "qdrant"),
                "EMBEDDING_MODEL_DIR": str(embedding),
                "RERANKER_MODEL_DIR": str(reranker),
                "LLM_URL": tgi.url,
                "TRACE_FILE": str(root / "traces.jsonl"),
            }
        )
        deps = build_deps(settings)
        try:
            with LocalServer(local_app(deps)) as server:
                yield server.url
        finally:
            deps.store.close()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- from the description


@SCHEMA.parametrize()
@FUZZ_SETTINGS
def test_every_operation_answers_within_its_description(case: Any, base_url: str) -> None:
    response = case.call(base_url=base_url)
    CASES[f"{case.method} {case.path}"] += 1

    case.validate_response(response, checks=CHECKS)
    assert response.status_code != 500
    if response.status_code >= 400 and case.method.upper() != "HEAD":
        headers = {name.lower(): values[0] for name, values in response.headers.items()}
        assert_error_shape(response.status_code, headers, response.content)


# --------------------------------------------------------------------------- beyond the description

JSON_TYPES = ["application/json", "application/json; charset=utf-8", "application/vnd.api+json"]
raw_bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=8,
    ).map(lambda value: json.dumps(value).encode()),
    st.builds(lambda pad: json.dumps({"query": "x", "pad": pad}).encode(), st.just("p" * 17_000)),
)
content_types = st.sampled_from([*JSON_TYPES, "", "text/plain", "application/xml", "*/*"])


@given(
    path=st.sampled_from(["/rag", "/retrieve"]),
    body=raw_bodies,
    content_type=content_types,
)
@FUZZ_SETTINGS
def test_bodies_that_are_not_requests_get_the_contract_error(
    base_url: str, path: str, body: bytes, content_type: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(base_url + path, content=body, headers=headers, timeout=60)
    CASES[f"raw POST {path}"] += 1

    if response.status_code == 200:  # a body that happens to be a valid request
        assert "query" in json.loads(body)
        return
    assert response.status_code in (400, 413, 415), response.text
    assert_error_shape(response.status_code, response.headers, response.content)


def test_the_fuzz_ran_the_cases_it_was_asked_for() -> None:
    # Runs after the fuzz tests above (file order): report and bound what was exercised
    total = sum(CASES.values())
    print(f"fuzz cases: {total} {dict(sorted(CASES.items()))}")
    for operation in ("POST /rag", "POST /retrieve"):
        assert CASES[operation] >= MAX_EXAMPLES // 2, CASES
    assert CASES["GET /health"] >= 1  # no inputs: hypothesis stops once it has tried them all


def assert_error_shape(status: int, headers: Any, content: bytes) -> None:
    assert headers["content-type"].startswith("application/json")
    body = json.loads(content)
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}
    assert all(isinstance(v, str) and v for v in body["error"].values())
    assert "Traceback" not in content.decode("utf-8", "replace")
    if status in (429, 503):
        assert headers["retry-after"].isdigit()
