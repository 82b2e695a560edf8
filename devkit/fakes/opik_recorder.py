"""A local stand-in for the Opik REST API that records what the real opik client sends.

It speaks just enough of Opik's protocol for the SDK: the batch create endpoints with Opik's
upsert-by-id semantics (a second write of the same id updates, it does not add), gzip request
bodies as the SDK sends them, the dataset and experiment endpoints `opik.evaluate` uses
(a dataset by name, its items inserted and streamed back, experiments, experiment items,
feedback scores), and 204/200 answers everywhere else. Fault modes let tests make it
fail (5xx), drop connections, or go down and come back on the same port.

    with OpikRecorder() as opik:
        os.environ["OPIK_URL_OVERRIDE"] = opik.url
        ...
        assert opik.traces[trace_id]["name"] == "rag"
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from devkit.fakes.loopback import LoopbackServer, TrackedHandler

TRACES_BATCH = "/v1/private/traces/batch"
SPANS_BATCH = "/v1/private/spans/batch"
TRACE_UPDATE = "/v1/private/traces/"
SPAN_UPDATE = "/v1/private/spans/"
DATASETS = "/v1/private/datasets"
DATASET_RETRIEVE = "/v1/private/datasets/retrieve"
DATASET_ITEMS = "/v1/private/datasets/items"
DATASET_ITEMS_STREAM = "/v1/private/datasets/items/stream"
EXPERIMENTS = "/v1/private/experiments"
EXPERIMENT_ITEMS = "/v1/private/experiments/items"
TRACE_FEEDBACK = "/v1/private/traces/feedback-scores"
VERSION = "/is-alive/ver"
SERVER_VERSION = "1.0.0"
"""Reported by the version probe: older than parallel dataset uploads, so the SDK inserts
items one batch after another (what this recorder models)."""
API_PREFIX = "/api"
"""Comet's URL is .../opik/api; a base URL ending in /api is accepted too."""


@dataclass(frozen=True)
class RecordedCall:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int


@dataclass
class _Faults:
    fail_next: int = 0
    fail_status: int = HTTPStatus.SERVICE_UNAVAILABLE
    fail_path: str | None = None
    drop_next: int = 0


@dataclass
class _State:
    calls: list[RecordedCall] = field(default_factory=list)
    traces: dict[str, dict[str, Any]] = field(default_factory=dict)
    spans: dict[str, dict[str, Any]] = field(default_factory=dict)
    writes: dict[str, int] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    """By name."""
    dataset_items: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Dataset name -> item id -> item."""
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    experiment_items: list[dict[str, Any]] = field(default_factory=list)
    feedback_scores: list[dict[str, Any]] = field(default_factory=list)
    faults: _Faults = field(default_factory=_Faults)
    id_window_s: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class OpikRecorder(LoopbackServer):
    """Threaded HTTP server on 127.0.0.1 and an ephemeral port; see the module docstring."""

    thread_name = "opik-recorder"

    def __init__(self) -> None:
        super().__init__()
        self._state = _State()

    def handler_class(self) -> type[TrackedHandler]:
        return _handler_for(self._state)

    # fault modes -----------------------------------------------------------------------------
    def fail_next(
        self, count: int, status: int = HTTPStatus.SERVICE_UNAVAILABLE, *, path: str | None = None
    ) -> None:
        """Answer the next `count` requests (to `path` only, if given) with `status`, storing
        nothing."""
        with self._state.lock:
            self._state.faults.fail_next = count
            self._state.faults.fail_status = status
            self._state.faults.fail_path = path

    def enforce_id_window(self, window_s: float) -> None:
        """Refuse (400) trace and span creations whose id is not a UUIDv7 with a timestamp
        this recent, as Opik does since mid-2026 (comet-ml/opik#7179, "UUIDv7 ingestion
        timestamp validation": every trace and span ingestion path, default window 24 h)."""
        with self._state.lock:
            self._state.id_window_s = window_s

    def drop_next(self, count: int) -> None:
        """Close the connection without answering on the next `count` requests."""
        with self._state.lock:
            self._state.faults.drop_next = count

    # what was recorded -----------------------------------------------------------------------
    @property
    def calls(self) -> list[RecordedCall]:
        with self._state.lock:
            return list(self._state.calls)

    @property
    def traces(self) -> dict[str, dict[str, Any]]:
        with self._state.lock:
            return {key: dict(value) for key, value in self._state.traces.items()}

    @property
    def spans(self) -> dict[str, dict[str, Any]]:
        with self._state.lock:
            return {key: dict(value) for key, value in self._state.spans.items()}

    @property
    def datasets(self) -> dict[str, dict[str, Any]]:
        with self._state.lock:
            return {name: dict(value) for name, value in self._state.datasets.items()}

    def dataset_items(self, name: str) -> list[dict[str, Any]]:
        with self._state.lock:
            return [dict(item) for item in self._state.dataset_items.get(name, {}).values()]

    @property
    def experiments(self) -> dict[str, dict[str, Any]]:
        with self._state.lock:
            return {key: dict(value) for key, value in self._state.experiments.items()}

    @property
    def experiment_items(self) -> list[dict[str, Any]]:
        with self._state.lock:
            return list(self._state.experiment_items)

    @property
    def feedback_scores(self) -> list[dict[str, Any]]:
        with self._state.lock:
            return list(self._state.feedback_scores)

    def writes(self, item_id: str) -> int:
        """How many times an id was written (an upsert keeps one item however many)."""
        with self._state.lock:
            return self._state.writes.get(item_id, 0)

    def paths(self) -> list[str]:
        return [f"{call.method} {call.path}" for call in self.calls]

    def reset(self) -> None:
        with self._state.lock:
            self._state.calls.clear()
            self._state.traces.clear()
            self._state.spans.clear()
            self._state.writes.clear()
            self._state.datasets.clear()
            self._state.dataset_items.clear()
            self._state.experiments.clear()
            self._state.experiment_items.clear()
            self._state.feedback_scores.clear()
            self._state.faults = _Faults()


def _handler_for(state: _State) -> type[TrackedHandler]:  # noqa: C901 - counts its handler class's methods
    class Handler(TrackedHandler):
        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_PUT(self) -> None:
            self._handle()

        def do_PATCH(self) -> None:
            self._handle()

        def _handle(self) -> None:
            body = self._read_body()
            path = self.path.split("?", 1)[0]
            if path.startswith(API_PREFIX + "/"):
                path = path[len(API_PREFIX) :]
            with state.lock:
                if state.faults.drop_next > 0:
                    state.faults.drop_next -= 1
                    drop = True
                else:
                    drop = False
                faults = state.faults
                payload: bytes | None = None
                if not drop and faults.fail_next > 0 and faults.fail_path in (None, path):
                    state.faults.fail_next -= 1
                    status = int(state.faults.fail_status)
                elif not drop:
                    status, payload = _evaluation(state, self.command, path, body) or (
                        _store(state, self.command, path, body),
                        None,
                    )
                else:
                    status = 0
                state.calls.append(
                    RecordedCall(self.command, path, dict(self.headers.items()), body, status)
                )
            if drop:
                self.close_connection = True
                self.connection.close()
                return
            self._respond(status, payload)

        def _read_body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.headers.get("Content-Encoding") == "gzip":
                raw = gzip.decompress(raw)
            if not raw:
                return None
            try:
                return json.loads(raw)
            except ValueError:
                return raw.decode("utf-8", "replace")

        def _respond(self, status: int, payload: bytes | None = None) -> None:
            if payload is None:
                payload = b"" if status == HTTPStatus.NO_CONTENT else b"{}"
            if status >= 400 and payload in (b"", b"{}"):
                payload = json.dumps({"errors": [f"recorder fault {status}"]}).encode()
            self.send_response(status)
            if payload:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def _evaluation(  # noqa: C901 - a route table: one branch per faked endpoint
    state: _State, method: str, path: str, body: Any
) -> tuple[int, bytes | None] | None:
    """The dataset and experiment endpoints (Opik's REST API, as opik.rest_api calls them);
    None for any other request. Caller holds the lock."""
    from rag.domain.ids import new_id

    body = body if isinstance(body, dict) else {}
    if method == "GET" and path == VERSION:
        return HTTPStatus.OK, json.dumps({"version": SERVER_VERSION}).encode()
    if method == "POST" and path == DATASET_RETRIEVE:
        dataset = state.datasets.get(body.get("dataset_name", ""))
        if dataset is None:
            return HTTPStatus.NOT_FOUND, json.dumps({"errors": ["Dataset not found"]}).encode()
        return HTTPStatus.OK, json.dumps(dataset).encode()
    if method == "GET" and path.startswith(DATASETS + "/") and path.count("/") == 4:
        wanted = path.rsplit("/", 1)[1]
        found = next((d for d in state.datasets.values() if d["id"] == wanted), None)
        if found is None:
            return HTTPStatus.NOT_FOUND, json.dumps({"errors": ["Dataset not found"]}).encode()
        return HTTPStatus.OK, json.dumps(found).encode()
    if method == "POST" and path == DATASETS:
        dataset = {"id": body.get("id") or new_id(), "name": body["name"]}
        state.datasets[body["name"]] = dataset
        return HTTPStatus.CREATED, b""
    if method == "PUT" and path == DATASET_ITEMS:
        name = body.get("dataset_name") or next(
            (d["name"] for d in state.datasets.values() if d["id"] == body.get("dataset_id")), ""
        )
        items = state.dataset_items.setdefault(name, {})
        for item in body.get("items", []):
            items[item.get("id") or new_id()] = item
        return HTTPStatus.NO_CONTENT, None
    if method == "POST" and path == DATASET_ITEMS_STREAM:
        # Newline-delimited JSON, one DatasetItem a line, as the real endpoint streams them.
        items = state.dataset_items.get(body.get("dataset_name", ""), {})
        lines = [json.dumps({**item, "id": item_id}) for item_id, item in items.items()]
        return HTTPStatus.OK, "\n".join(lines).encode()
    if method == "POST" and path == EXPERIMENTS:
        experiment_id = body.get("id") or new_id()
        state.experiments[experiment_id] = {**body, "id": experiment_id}
        return HTTPStatus.CREATED, b""
    if method == "POST" and path == EXPERIMENT_ITEMS:
        state.experiment_items.extend(body.get("experiment_items", []))
        return HTTPStatus.NO_CONTENT, None
    if method == "PUT" and path == TRACE_FEEDBACK:
        state.feedback_scores.extend(body.get("scores", []))
        return HTTPStatus.NO_CONTENT, None
    return None


def _store(state: _State, method: str, path: str, body: Any) -> int:
    """Apply one accepted request; caller holds the lock."""
    for prefix, store in ((TRACE_UPDATE, state.traces), (SPAN_UPDATE, state.spans)):
        # Trace.end() / Span.end() in the high-level client PATCH the item by id.
        if method == "PATCH" and path.startswith(prefix) and isinstance(body, dict):
            item_id = path[len(prefix) :]
            store[item_id] = {**store.get(item_id, {"id": item_id}), **body}
            return HTTPStatus.NO_CONTENT
    if method != "POST" or path not in (TRACES_BATCH, SPANS_BATCH):
        return HTTPStatus.NO_CONTENT if method != "GET" else HTTPStatus.OK
    key, store = ("traces", state.traces) if path == TRACES_BATCH else ("spans", state.spans)
    items = (body or {}).get(key)
    if not isinstance(items, list) or not all(isinstance(i, dict) and i.get("id") for i in items):
        return HTTPStatus.BAD_REQUEST
    if state.id_window_s is not None and not all(
        _in_window(i["id"], state.id_window_s) for i in items
    ):
        return HTTPStatus.BAD_REQUEST  # the whole batch, as Opik validates before writing
    for item in items:
        # Opik upserts by id: fields of a later write replace those of the earlier one.
        store[item["id"]] = {**store.get(item["id"], {}), **item}
        state.writes[item["id"]] = state.writes.get(item["id"], 0) + 1
    return HTTPStatus.NO_CONTENT


def _in_window(item_id: str, window_s: float) -> bool:
    parsed = uuid.UUID(item_id)
    return parsed.version == 7 and time.time() - (parsed.int >> 80) / 1000 <= window_s


def make_trace_event(
    *,
    query: str = "What did Paul write about RAG evaluation?",
    context: str = "Paul wrote that RAG systems need retrieval and generation metrics.",
    answer: str = "He argues for measuring retrieval and generation separately.",
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A schema-1 trace event (docs/CONTRACTS.md) as the business Lambda emits it, fresh ids."""
    from rag.domain.ids import new_id

    prompt = (
        "### Instruction:\nAnswer using the context.\n\n"
        f"### Context:\n{context}\n\n### Question:\n{query}"
    )
    stamps = [f"2026-11-27T10:00:0{i}.000000Z" for i in range(9)]
    chunks = [
        {"id": new_id(), "collection": "embedded_articles", "content": context, "score": 0.91},
        {"id": new_id(), "collection": "embedded_posts", "content": context[::-1], "score": 0.42},
    ]
    # Literal names on purpose: this is the wire event (docs/CONTRACTS.md), in pipeline order.
    io: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
        "self_query": ({"query": query}, {"author": "Paul Iusztin"}),
        "query_expansion": ({"query": query, "n": 3}, {"queries": [query, f"{query} metrics"]}),
        "embed": ({"queries": [query, f"{query} metrics"]}, {"count": 2, "dim": 384}),
        "search": ({"limit": 6, "author": "Paul Iusztin"}, {"chunks": chunks}),
        "rerank": ({"query": query, "count": 2}, {"chunks": chunks[:1]}),
        "prompt": ({"query": query, "context": [context]}, {"prompt": prompt}),
        "generate": ({"prompt": prompt}, {"text": answer, "finish_reason": "eos_token"}),
    }
    spans = []
    for index, (name, (span_in, span_out)) in enumerate(io.items()):
        spans.append(
            {
                "id": new_id(),
                "name": name,
                "type": "llm"
                if name in ("self_query", "query_expansion", "generate")
                else "general",
                "started_at": stamps[index],
                "ended_at": stamps[index + 1],
                "input": span_in,
                "output": span_out,
                "metadata": {"scores": [c["score"] for c in chunks]} if name == "search" else {},
                "usage": {"prompt_tokens": 812, "completion_tokens": 120}
                if name == "generate"
                else None,
                "error": error if name == "generate" else None,
            }
        )
    return {
        "schema": 1,
        "trace_id": new_id(),
        "name": "rag",
        "started_at": stamps[0],
        "ended_at": stamps[8],
        "input": {"query": query, "k": 3, "author": None, "expand": True},
        "output": None
        if error
        else {
            "answer": answer,
            "sources": [
                {"id": c["id"], "collection": c["collection"], "score": c["score"]} for c in chunks
            ],
        },
        "metadata": {
            "model_id": "mlabonne/TwinLlama-3.1-8B-DPO",
            "model_revision": "0123abc",
            "endpoint": "llm-twin-endpoint",
            "inference_component": "llm-twin-ic",
            "embedding_model": "sentence-transformers/all-MiniLM-L6-v2",
            "reranker_model": "cross-encoder/ms-marco-MiniLM-L-6-v2",
            "k": 3,
            "collections": ["embedded_articles", "embedded_posts", "embedded_repositories"],
            "prompt_format": "alpaca",
            "status": 502 if error else 200,
            "fallbacks": [],
            "warnings": [],
        },
        "tags": ["rag", "twin-llama-3.1-8b"],
        "usage": {"prompt_tokens": 812, "completion_tokens": 120, "total_tokens": 932},
        "error": error,
        "spans": spans,
    }
