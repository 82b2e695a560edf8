"""The lifecycle the protocol fakes share: a threaded HTTP server on 127.0.0.1 that can go down
and come back on the same port, closing kept-alive client connections when it stops (a stopped
server that still answered on an open connection would hide exactly the faults tests want) and
waking the handlers that sleep on purpose (a hang, a stall, token pacing), so `stop` is quick."""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, Self, TypeVar

SHUTDOWN_POLL_S = 0.02
"""How often the serving thread checks for shutdown; short so `down`/`stop` return quickly."""


class Connections:
    """Open client connections, so `stop` can close the kept-alive ones."""

    def __init__(self) -> None:
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def add(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.add(connection)

    def discard(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.discard(connection)

    def close_all(self) -> None:
        with self._lock:
            for connection in self._open:
                with contextlib.suppress(OSError):  # already closed by the client
                    connection.shutdown(socket.SHUT_RDWR)
            self._open.clear()


class TrackedHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 handler that registers its connection and keeps test output quiet."""

    protocol_version = "HTTP/1.1"
    connections: Connections  # set by LoopbackServer on the class it serves

    def setup(self) -> None:
        super().setup()
        self.connections.add(self.connection)

    def finish(self) -> None:
        self.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def send_body(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        """A whole response with its Content-Length; a client gone meanwhile (its read timeout,
        or the fake stopping) just ends the connection."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True


F = TypeVar("F")


class Faults(Generic[F]):
    """How a fake misbehaves: queued faults, one per request, then the standing one (if set)."""

    def __init__(self) -> None:
        self._queued: list[F] = []
        self._standing: F | None = None
        self._lock = threading.Lock()

    def queue(self, *faults: F) -> None:
        with self._lock:
            self._queued.extend(faults)

    def set(self, fault: F | None) -> None:
        with self._lock:
            self._standing = fault

    def next(self) -> F | None:
        """The fault for the request being served: the next queued one, else the standing one."""
        with self._lock:
            return self._queued.pop(0) if self._queued else self._standing


class LoopbackServer:
    """Subclasses give `handler_class()`; `start`, `stop`, `down`, `up`, `url` come from here.
    Handlers that wait on purpose wait with `sleep`, which `stop` cuts short."""

    thread_name = "loopback-fake"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.connections = Connections()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def handler_class(self) -> type[TrackedHandler]:
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if the fake stops meanwhile."""
        if seconds > 0:
            self._stopping.wait(seconds)

    def start(self) -> Self:
        self._stopping.clear()
        handler = type("Handler", (self.handler_class(),), {"connections": self.connections})
        server = ThreadingHTTPServer((self.host, self.port), handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_S},
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.connections.close_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def down(self) -> None:
        """Stop listening: connections are refused until `up`."""
        self.stop()

    def up(self) -> None:
        """Listen again on the same port, keeping whatever the fake recorded."""
        if self._server is None:
            self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
