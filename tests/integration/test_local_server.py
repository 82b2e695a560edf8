"""`make local` end to end: `python -m tools.local_server` as a process, called over real HTTP.

The server runs on an ephemeral port with embedded Qdrant in a tmp folder, filled from the sample
corpus on its first start. The embedder is the real all-MiniLM-L6-v2 ONNX when it is on this
machine (RAG_TEST_EMBEDDING_MODEL_DIR, else ../shared/models/all-MiniLM-L6-v2-onnx), else a tiny
model; the reranker is a tiny cross-encoder; the LLM is the TGI-protocol fake, scripted to answer
the self-query and expansion grammars with valid JSON; Opik is the local recorder. One server
serves most tests; the last test stops it and restarts on the same store without an LLM.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from qdrant_client import QdrantClient

from devkit.fakes.opik_recorder import OpikRecorder
from devkit.fakes.tgi_server import GenerationRequest, TgiServer, instance_of
from devkit.tiny_models import build_cross_encoder, build_embedder

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "sample_data" / "corpus.jsonl"
SHARED_MINILM = REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2-onnx"
COLLECTIONS = ("embedded_articles", "embedded_posts", "embedded_repositories")
API_KEY = "local-test-key"
ANSWER = "Overlap matters less than chunk boundaries (stand-in model)."
GATEWAY_FORBIDDEN = {
    "error": {
        "code": "forbidden",
        "message": "missing or invalid API key (Authorization: Bearer or x-api-key header)",
    }
}
API_GATEWAY_MAX_BODY = 10 * 1024 * 1024
START_GUARD_S = 300.0
"""Fails a server that never comes up instead of hanging the suite; not a speed assertion."""
STOP_GUARD_S = 60.0
POLL_S = 0.1
OPIK_POLLS = 200
LOCAL_ENV_PREFIXES = (
    "LLM_",
    "QDRANT_",
    "LOCAL_",
    "OPIK_",
    "TRACE_",
    "MODEL",
    "EMBEDDING_",
    "RERANK",
    "SELF_QUERY",
    "EXPANSION_",
    "CORS_",
)
"""A developer's own local-mode settings must not leak into the server under test."""


def _corpus() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line]


DOCUMENTS = _corpus()
AUTHORS = sorted({d["author_full_name"] for d in DOCUMENTS})
LINKS = {d["link"] for d in DOCUMENTS if d.get("link")}


def twin_responder(request: GenerationRequest) -> str:
    """Self-query names the corpus author the prompt mentions; expansion rephrases; else ANSWER."""
    if request.schema is None:
        return ANSWER
    properties = request.schema.get("properties", {})
    if "author_full_name" in properties:
        named = next((a for a in AUTHORS if a in request.prompt), None)
        return json.dumps({"author_full_name": named})
    if "queries" in properties:
        n = properties["queries"].get("minItems", 1)
        phrasings = [f"chunking documents for retrieval, phrasing {i + 1}" for i in range(n)]
        return json.dumps({"queries": phrasings})
    return json.dumps(instance_of(request.schema))


# --------------------------------------------------------------------------- the server process


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(STOP_GUARD_S)


def start_server(env: dict[str, str], log_path: Path) -> ServerProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(LOCAL_ENV_PREFIXES)}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO / "lambda_src"), str(REPO)])
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tools.local_server", "--host", "127.0.0.1", "--port", "0"],
            cwd=REPO,
            env={**base, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    for _ in range(int(START_GUARD_S / POLL_S)):
        text = log_path.read_text(encoding="utf-8", errors="replace")
        if "Press Ctrl-C to stop." in text:
            url = text.split("listening on ", 1)[1].split()[0]
            return ServerProcess(process, log_path, url)
        try:
            process.wait(POLL_S)
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"local server exited with {process.returncode}:\n{log_path.read_text()}")
    process.kill()
    pytest.fail(f"local server not ready after {START_GUARD_S} s:\n{log_path.read_text()}")


def banner_points(log: str) -> int:
    """The point count of the last start's banner (`Qdrant: ...: N points (...)`)."""
    line = [row for row in log.splitlines() if row.strip().startswith("Qdrant:")][-1]
    return int(line.split(" points", 1)[0].rsplit(" ", 1)[1])


def count_points(path: Path) -> int:
    client = QdrantClient(path=str(path))
    try:
        return sum(client.count(name, exact=True).count for name in COLLECTIONS)
    finally:
        client.close()


def trace_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return str(body["error"]["message"])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def embedding_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("RAG_TEST_EMBEDDING_MODEL_DIR")
    if configured:
        return Path(configured)
    if SHARED_MINILM.is_dir():
        return SHARED_MINILM
    words = {w.strip(".,:;!?()\"'").lower() for d in DOCUMENTS for w in d["content"].split()}
    return build_embedder(tmp_path_factory.mktemp("models") / "embedding", words=sorted(words))


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cross_encoder(tmp_path_factory.mktemp("models") / "reranker")


@pytest.fixture(scope="module")
def tgi() -> Iterator[TgiServer]:
    with TgiServer(twin_responder) as server:
        yield server


@pytest.fixture(scope="module")
def opik() -> Iterator[OpikRecorder]:
    with OpikRecorder() as recorder:
        yield recorder


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("local")


@pytest.fixture(scope="module")
def server(
    workdir: Path, embedding_dir: Path, reranker_dir: Path, tgi: TgiServer, opik: OpikRecorder
) -> Iterator[ServerProcess]:
    env = {
        "QDRANT_PATH": str(workdir / "qdrant"),
        "TRACE_FILE": str(workdir / "traces.jsonl"),
        "EMBEDDING_MODEL_DIR": str(embedding_dir),
        "RERANKER_MODEL_DIR": str(reranker_dir),
        "LLM_URL": tgi.url,
        "LOCAL_API_KEY": API_KEY,
        "OPIK_URL_OVERRIDE": opik.url,
        "OPIK_API_KEY": "opik-test-key",
        "OPIK_WORKSPACE": "local-test",
        "OPIK_PROJECT_NAME": "llm-twin-local-test",
    }
    running = start_server(env, workdir / "first.log")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"x-api-key": API_KEY}, timeout=60) as http:
        yield http


# --------------------------------------------------------------------------- happy paths


def test_first_start_ingests_the_sample_corpus(server: ServerProcess) -> None:
    # Given a fresh QDRANT_PATH, when the server started, then it filled it and says so
    log = server.log()
    assert "Qdrant store is empty: ingesting" in log
    assert f"ingested {len(DOCUMENTS)} documents" in log
    assert banner_points(log) >= len(DOCUMENTS)
    assert "LLM:       TGI at http://127.0.0.1:" in log
    assert "Reranker:  on" in log


def test_health_answers_ok_with_a_request_id(client: httpx.Client) -> None:
    response = client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-amzn-requestid"]


def test_rag_answers_the_handbook_request_with_sources(client: httpx.Client) -> None:
    # Given the Handbook's request shape, when posted, then the answer comes with its sources
    response = client.post("/rag", json={"query": "What chunk overlap should I use for RAG?"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] == ANSWER
    assert 1 <= len(body["sources"]) <= 3
    for source in body["sources"]:
        assert source["collection"] in COLLECTIONS
        assert source["author_full_name"] in AUTHORS
        assert source["link"] is None or source["link"] in LINKS
    assert body["model"] == "mlabonne/TwinLlama-3.1-8B-DPO"
    assert body["usage"]["completion_tokens"] > 0
    assert body["trace_id"]


def test_rag_self_query_keeps_to_the_named_author(client: httpx.Client) -> None:
    # Given a query naming an author, when the LLM's self-query extracts the name,
    # then every source is that author's
    response = client.post(
        "/rag",
        json={"query": "What does Maya Okafor think about chunking?", "include_context": True},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sources"]
    assert {s["author_full_name"] for s in body["sources"]} == {"Maya Okafor"}
    assert all(c["content"] for c in body["context"])


def test_retrieve_returns_sample_corpus_chunks(client: httpx.Client) -> None:
    response = client.post("/retrieve", json={"query": "How do I make ingestion idempotent?"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["expanded_queries"][0] == "How do I make ingestion idempotent?"
    assert len(body["expanded_queries"]) > 1  # the fake's rephrasings were searched too
    assert body["chunks"]
    for chunk in body["chunks"]:
        assert chunk["content"]
        assert chunk["collection"] in COLLECTIONS
        assert chunk["author_full_name"] in AUTHORS
        assert chunk["link"] is None or chunk["link"] in LINKS


def test_retrieve_with_author_returns_only_that_authors_chunks(client: httpx.Client) -> None:
    response = client.post(
        "/retrieve",
        json={"query": "Which vector database should I use?", "author": "Sofia Marchetti", "k": 5},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["filters"] == {"author": "Sofia Marchetti"}
    assert body["chunks"]
    assert {c["author_full_name"] for c in body["chunks"]} == {"Sofia Marchetti"}


def test_concurrent_requests_do_not_mix(client: httpx.Client) -> None:
    # Given one request per author at the same time, then each answer is for its own request
    # (Powertools keeps the event being resolved on a class attribute shared by all threads)
    def retrieve(author: str) -> tuple[str, dict[str, Any]]:
        reply = client.post(
            "/retrieve", json={"query": "what do you write about?", "author": author, "k": 2}
        )
        return author, reply.json()

    with ThreadPoolExecutor(len(AUTHORS) * 2) as pool:
        results = list(pool.map(retrieve, AUTHORS * 2))

    for author, body in results:
        assert body["filters"] == {"author": author}
        assert {c["author_full_name"] for c in body["chunks"]} == {author}


def test_each_request_writes_one_trace_line_also_sent_to_opik(
    client: httpx.Client, workdir: Path, opik: OpikRecorder
) -> None:
    traces = workdir / "traces.jsonl"
    before = len(trace_lines(traces))

    response = client.post("/retrieve", json={"query": "GPU cost", "expand": False})

    assert response.status_code == 200
    lines = trace_lines(traces)
    assert len(lines) == before + 1
    event = lines[-1]
    assert event["schema"] == 1
    assert event["name"] == "retrieve"
    assert event["trace_id"] == response.json()["trace_id"]
    assert {s["name"] for s in event["spans"]} >= {"embed", "search"}
    # Opik gets the same event on a background thread: wait for it, boundedly
    for _ in range(OPIK_POLLS):
        if event["trace_id"] in opik.traces:
            break
        time.sleep(POLL_S)
    assert opik.traces[event["trace_id"]]["name"] == "retrieve"


# --------------------------------------------------------------------------- errors

BAD_BODIES = [
    pytest.param(b"{", "application/json", 400, "invalid_json", id="bad-json"),
    pytest.param(b"", "application/json", 400, "invalid_json", id="empty-body"),
    pytest.param(b"[]", "application/json", 400, None, id="not-an-object"),
    pytest.param(b'{"query": 5}', "application/json", 400, "validation_error", id="query-type"),
    pytest.param(b'{"query": ""}', "application/json", 400, "validation_error", id="empty-query"),
    pytest.param(
        json.dumps({"query": "q" * 2001}).encode(),
        "application/json",
        400,
        "validation_error",
        id="oversized-query",
    ),
    pytest.param(
        b'{"query": "x", "k": "3"}', "application/json", 400, "validation_error", id="k-type"
    ),
    pytest.param(b'{"query": "x", "k": 21}', "application/json", 400, "validation_error", id="k"),
    pytest.param(
        b'{"query": "x", "nope": 1}', "application/json", 400, "validation_error", id="unknown"
    ),
    pytest.param(b'{"query": "x"}', "text/plain", 415, "unsupported_media_type", id="text-plain"),
    pytest.param(
        json.dumps({"query": "x", "pad": "p" * 17_000}).encode(),
        "application/json",
        413,
        "payload_too_large",
        id="over-16k",
    ),
]


@pytest.mark.parametrize("route", ["/rag", "/retrieve"])
@pytest.mark.parametrize(("body", "content_type", "status", "code"), BAD_BODIES)
def test_bad_bodies_get_the_contract_error(
    client: httpx.Client,
    route: str,
    body: bytes,
    content_type: str,
    status: int,
    code: str | None,
) -> None:
    response = client.post(route, content=body, headers={"content-type": content_type})

    assert_error(response, status, code)


def test_validation_errors_name_the_field(client: httpx.Client) -> None:
    assert "query" in assert_error(client.post("/rag", json={"query": 5}), 400)
    assert "nope" in assert_error(client.post("/rag", json={"query": "x", "nope": 1}), 400)
    assert "generation" in assert_error(
        client.post("/rag", json={"query": "x", "generation": {"max_new_tokens": 10**6}}), 400
    )


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", "/rag", "POST"), ("PUT", "/retrieve", "POST"), ("POST", "/health", "GET")],
)
def test_wrong_method_is_405_with_allow(
    client: httpx.Client, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path, json={"query": "x"})

    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow


def test_an_unusual_method_gets_the_json_error_not_an_html_page(client: httpx.Client) -> None:
    # Given a method http.server has no handler for, then the API's own 405 JSON answers
    response = client.request("TRACE", "/rag")
    assert response.status_code == 405
    assert set(response.json()["error"]) == {"code", "message"}


def test_unknown_path_is_404(client: httpx.Client) -> None:
    assert_error(client.get("/nope/deeper"), 404, "not_found")


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}], ids=["missing", "invalid"])
def test_api_key_is_required_when_set(server: ServerProcess, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/health"), ("POST", "/rag")):
        response = httpx.request(
            method, f"{server.url}{path}", headers=headers, json={"query": "x"}, timeout=30
        )

        assert response.status_code == 403
        assert response.json() == GATEWAY_FORBIDDEN


def test_body_over_api_gateway_limit_is_413_before_reading(server: ServerProcess) -> None:
    # Given a request that only announces a body above 10 MB, then it is refused unread
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", "/rag")
        connection.putheader("x-api-key", API_KEY)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(API_GATEWAY_MAX_BODY + 1))
        connection.endheaders()
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()

    assert response.status == 413
    assert body == {"error": {"code": "payload_too_large", "message": "request body too large"}}


def test_what_another_web_page_could_send_is_refused(server: ServerProcess) -> None:
    """The started process applies LocalGateway (tests/integration/test_local_exposure.py has
    the cases): a rebound Host (RFC 9110 15.5.20: 421), a foreign Origin (403), and a POST with
    no Content-Type, which needs no CORS preflight (https://fetch.spec.whatwg.org/#cors-safelisted-request-header)."""
    key = {"x-api-key": API_KEY}
    json_type = {"content-type": "application/json", **key}
    body = json.dumps({"query": "x"})

    rebound = httpx.post(
        f"{server.url}/rag", content=body, headers={**json_type, "host": "evil.example"}
    )
    foreign = httpx.post(
        f"{server.url}/rag", content=body, headers={**json_type, "origin": "https://evil.example"}
    )
    untyped = httpx.post(f"{server.url}/rag", content=body.encode(), headers=key)

    assert_error(rebound, 421, "misdirected_request")
    assert_error(foreign, 403, "forbidden")
    assert_error(untyped, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"query": "\\ud800"}', "application/json"),
        (b'{"query": "q", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "application/vnd.api+json"),
    ],
    ids=["lone-surrogate", "deep-nesting"],
)
def test_unservable_json_is_a_400_written_to_the_trace_file(
    client: httpx.Client, workdir: Path, body: bytes, content_type: str
) -> None:
    """I-JSON (RFC 7493 2.1) forbids lone surrogates; RFC 8259 section 9 lets a parser limit
    nesting: both are client errors, and rejected requests leave a trace line like any other."""
    traces = workdir / "traces.jsonl"
    before = len(trace_lines(traces))

    response = client.post("/rag", content=body, headers={"content-type": content_type})

    assert_error(response, 400, "invalid_json")
    lines = trace_lines(traces)
    assert len(lines) == before + 1
    assert (lines[-1]["name"], lines[-1]["metadata"]["status"]) == ("rag", 400)


def test_request_log_has_one_line_per_request(server: ServerProcess, client: httpx.Client) -> None:
    client.get("/health")

    assert any(line.startswith("GET /health 200 ") for line in server.log().splitlines())


# --------------------------------------------------------------------------- ingest CLI


def test_ingesting_the_same_file_twice_adds_no_duplicates(
    tmp_path: Path, embedding_dir: Path
) -> None:
    from tools import ingest

    subset = tmp_path / "subset.jsonl"
    picked = [
        d for c in ("articles", "posts", "repositories") for d in DOCUMENTS if d["collection"] == c
    ][:2]
    subset.write_text("".join(json.dumps(d) + "\n" for d in picked), encoding="utf-8")
    argv = [
        str(subset),
        "--qdrant-path",
        str(tmp_path / "qdrant"),
        "--embedding-model-dir",
        str(embedding_dir),
    ]

    assert ingest.main(argv) == 0
    first = count_points(tmp_path / "qdrant")
    assert ingest.main(argv) == 0

    assert first > 0
    assert count_points(tmp_path / "qdrant") == first


# --------------------------------------------------------------------------- restart, no LLM


def test_restart_reuses_the_store_and_retrieve_works_without_an_llm(
    server: ServerProcess, workdir: Path, embedding_dir: Path
) -> None:
    # Given the first server stopped gracefully
    assert server.stop() == 0
    assert "stopped" in server.log()
    points = count_points(workdir / "qdrant")

    # When a server starts on the same store with no LLM and no API key
    second = start_server(
        {
            "QDRANT_PATH": str(workdir / "qdrant"),
            "TRACE_FILE": str(workdir / "traces.jsonl"),
            "EMBEDDING_MODEL_DIR": str(embedding_dir),
        },
        workdir / "second.log",
    )
    try:
        log = second.log()
        with httpx.Client(base_url=second.url, timeout=60) as http:
            rag = http.post("/rag", json={"query": "What chunk overlap should I use?"})
            by_author = http.post(
                "/retrieve",
                json={"query": "chunking", "author": "Maya Okafor", "expand": False},
            )
            plain = http.post("/retrieve", json={"query": "chunking"})
    finally:
        assert second.stop() == 0

    # Then the store was reused as it was, not ingested again
    assert "; reused" in log
    assert "ingesting" not in log
    assert banner_points(log) == points
    assert count_points(workdir / "qdrant") == points
    if not (REPO / "build" / "models" / "reranker").is_dir():
        assert "reranker off: no cross-encoder" in log  # said once, at start
    # /rag says how to configure an LLM; /retrieve still serves
    message = assert_error(rag, 503, "llm_not_configured")
    assert "LLM_URL" in message
    assert "LLM_ENDPOINT" in message
    assert by_author.status_code == 200, by_author.text
    assert {c["author_full_name"] for c in by_author.json()["chunks"]} == {"Maya Okafor"}
    assert plain.status_code == 200, plain.text
    assert plain.json()["chunks"]
