"""A Qdrant REST server on 127.0.0.1 for fault tests, backed by an embedded `QdrantClient`.

It answers the calls qdrant-client makes for the business Lambda and the local server
(`GET /collections/{name}`, `GET /collections/{name}/exists`, `POST .../points/count`,
`POST .../points/query/batch`) in Qdrant's REST shape (`{"result", "status", "time"}`, errors as
`{"status": {"error": ...}}`), by delegating to the embedded client: real search results, real
payloads. Request bodies are parsed with qdrant-client's generated models (Qdrant's OpenAPI
contract, `extra="forbid"`): a body a real server would refuse is answered 400 "Format error in
JSON body", as Qdrant does. With `api_key`, a request without that `api-key` header is answered
401, as a server configured with `service.api_key` does
(https://qdrant.tech/documentation/guides/security/). Fault modes make it misbehave the way a
Qdrant server or its load balancer does:

    with QdrantFake(backend, api_key="...") as qdrant:
        qdrant.set_fault(QdrantFault.http_status(500))   # every call answers 500
        qdrant.set_fault(QdrantFault.slow(5))       # accepts, then sleeps before answering
        qdrant.set_fault(QdrantFault.missing("embedded_posts"))  # 404, as a deleted collection
        qdrant.down(); qdrant.up()                   # connection refused, then back on one port
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError
from qdrant_client import QdrantClient, models

from devkit.fakes.loopback import Faults, LoopbackServer, TrackedHandler

_ROUTE = re.compile(
    r"^/collections/(?P<name>[^/]+)(?P<rest>/exists|/points/count|/points/query/batch)?$"
)


@dataclass(frozen=True)
class QdrantFault:
    kind: Literal["status", "slow", "missing"]
    status: int = 0
    seconds: float = 0.0
    collections: frozenset[str] = frozenset()

    @classmethod
    def http_status(cls, status: int) -> QdrantFault:
        """Every call answers `status` with Qdrant's error body."""
        return cls("status", status=status)

    @classmethod
    def slow(cls, seconds: float) -> QdrantFault:
        """Accept the request, then answer only after `seconds` (or when the fake stops)."""
        return cls("slow", seconds=seconds)

    @classmethod
    def missing(cls, *collections: str) -> QdrantFault:
        """These collections answer 404 "doesn't exist", as after a deletion."""
        return cls("missing", collections=frozenset(collections))


@dataclass(frozen=True)
class QdrantCall:
    method: str
    path: str
    api_key: str | None
    """The `api-key` header the client sent, if any."""
    body: Any
    client_port: int
    """The client's end of the connection: the same port again is a kept-alive connection."""


@dataclass
class _State:
    backend: QdrantClient
    sleep: Callable[[float], None]
    """The server's `sleep`: a slow answer ends when the fake stops."""
    api_key: str | None = None
    faults: Faults[QdrantFault] = field(default_factory=Faults)
    calls: list[QdrantCall] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class QdrantFake(LoopbackServer):
    thread_name = "qdrant-fake"

    def __init__(self, backend: QdrantClient, *, port: int = 0, api_key: str | None = None) -> None:
        super().__init__(port=port)
        self._state = _State(backend, self.sleep, api_key=api_key)

    def handler_class(self) -> type[TrackedHandler]:
        return _handler_for(self._state)

    @property
    def calls(self) -> list[QdrantCall]:
        with self._state.lock:
            return list(self._state.calls)

    def set_fault(self, fault: QdrantFault | None) -> None:
        self._state.faults.set(fault)


def _ok(result: Any) -> tuple[int, dict[str, Any]]:
    return 200, {"result": result, "status": "ok", "time": 0.0001}


def _error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"status": {"error": message}, "time": 0.0001}


def _not_found(name: str) -> tuple[int, dict[str, Any]]:
    return _error(404, f"Not found: Collection `{name}` doesn't exist!")


def _answer(
    state: _State, method: str, path: str, body: Any, api_key: str | None
) -> tuple[int, dict[str, Any]]:
    if state.api_key is not None and api_key != state.api_key:
        return _error(401, "Must provide an API key or an Authorization bearer token")
    match = _ROUTE.match(path.split("?", 1)[0])
    if match is None:
        return _error(404, f"Not found: {path}")
    name, rest = match["name"], match["rest"] or ""
    fault = state.faults.next()
    if fault is not None and fault.kind == "status":
        return _error(fault.status, f"Service internal error: fake fault {fault.status}")
    if fault is not None and fault.kind == "slow":
        state.sleep(fault.seconds)
    missing = fault is not None and fault.kind == "missing" and name in fault.collections
    backend = state.backend
    exists = not missing and backend.collection_exists(name)
    if method == "GET" and rest == "/exists":
        return _ok({"exists": exists})
    if not exists:
        return _not_found(name)
    if method == "GET" and rest == "":
        return _ok(backend.get_collection(name).model_dump(mode="json"))
    try:
        if method == "POST" and rest == "/points/count":
            count_filter = (body or {}).get("filter")
            request = models.CountRequest.model_validate({"filter": count_filter, "exact": True})
            count = backend.count(name, count_filter=request.filter, exact=True)
            return _ok({"count": count.count})
        if method == "POST" and rest == "/points/query/batch":
            batch = models.QueryRequestBatch.model_validate(body)
            responses = backend.query_batch_points(name, requests=batch.searches)
            return _ok([response.model_dump(mode="json") for response in responses])
    except ValidationError as exc:
        return _error(400, f"Format error in JSON body: {exc.errors()[0]['msg']}")
    return _error(405, f"{method} not supported by the fake on {path}")


def _handler_for(state: _State) -> type[TrackedHandler]:
    class Handler(TrackedHandler):
        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def _handle(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            api_key = self.headers.get("api-key")
            try:
                body = json.loads(raw) if raw else None
                with state.lock:
                    path = self.path.split("?", 1)[0]
                    state.calls.append(
                        QdrantCall(self.command, path, api_key, body, self.client_address[1])
                    )
                status, payload = _answer(state, self.command, self.path, body, api_key)
            except Exception as exc:  # a bug in the fake must show, not hang the client
                status, payload = _error(500, f"fake failed: {type(exc).__name__}: {exc}")
            self.send_body(status, json.dumps(payload).encode())

    return Handler
