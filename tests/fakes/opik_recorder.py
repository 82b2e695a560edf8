"""A local stand-in for the Opik REST API that records what the real opik client sends.

It speaks just enough of Opik's protocol for the SDK: the batch create endpoints with Opik's
upsert-by-id semantics (a second write of the same id updates, it does not add), gzip request
bodies as the SDK sends them, and 204/200 answers everywhere else. Fault modes let tests make it
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
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from tests.fakes.loopback import LoopbackServer, TrackedHandler

TRACES_BATCH = "/v1/private/traces/batch"
SPANS_BATCH = "/v1/private/spans/batch"
TRACE_UPDATE = "/v1/private/traces/"
SPAN_UPDATE = "/v1/private/spans/"
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
    faults: _Faults = field(default_factory=_Faults)
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
            self._state.faults = _Faults()


def _handler_for(state: _State) -> type[TrackedHandler]:
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
                if not drop and faults.fail_next > 0 and faults.fail_path in (None, path):
                    state.faults.fail_next -= 1
                    status = int(state.faults.fail_status)
                elif not drop:
                    status = _store(state, self.command, path, body)
                else:
                    status = 0
                state.calls.append(
                    RecordedCall(self.command, path, dict(self.headers.items()), body, status)
                )
            if drop:
                self.close_connection = True
                self.connection.close()
                return
            self._respond(status)

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

        def _respond(self, status: int) -> None:
            payload = b"" if status == HTTPStatus.NO_CONTENT else b"{}"
            if status >= 400:
                payload = json.dumps({"errors": [f"recorder fault {status}"]}).encode()
            self.send_response(status)
            if payload:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


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
    for item in items:
        # Opik upserts by id: fields of a later write replace those of the earlier one.
        store[item["id"]] = {**store.get(item["id"], {}), **item}
        state.writes[item["id"]] = state.writes.get(item["id"], 0) + 1
    return HTTPStatus.NO_CONTENT


SPAN_NAMES = ("self_query", "query_expansion", "embed", "search", "rerank", "prompt", "generate")


def make_trace_event(
    *,
    query: str = "What did Paul write about RAG evaluation?",
    context: str = "Paul wrote that RAG systems need retrieval and generation metrics.",
    answer: str = "He argues for measuring retrieval and generation separately.",
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A schema-1 trace event (docs/CONTRACTS.md) as the business Lambda emits it, fresh ids."""
    from rag.ids import new_id

    prompt = (
        "### Instruction:\nAnswer using the context.\n\n"
        f"### Context:\n{context}\n\n### Question:\n{query}"
    )
    stamps = [f"2026-11-27T10:00:0{i}.000000Z" for i in range(9)]
    chunks = [
        {"id": new_id(), "collection": "embedded_articles", "content": context, "score": 0.91},
        {"id": new_id(), "collection": "embedded_posts", "content": context[::-1], "score": 0.42},
    ]
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
    for index, name in enumerate(SPAN_NAMES):
        span_in, span_out = io[name]
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
