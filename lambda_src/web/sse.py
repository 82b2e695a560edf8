"""Server-sent events for a streamed answer (`/rag`, DESIGN 3.1; the OpenAI-compatible route
encodes the same pipeline events its own way), and the bridge from the pipeline's
blocking generator (it waits on the model's socket) to the ASGI server's event loop.

The pipeline runs on a worker thread and hands each event to the loop; the response waits for the
next one at most KEEPALIVE_S, sending a `: keep-alive` comment when nothing came. A client that
goes away cancels the response: the worker then closes the pipeline's generator, which closes the
model's stream (at the latest when the model's next token or its stall timeout arrives).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

from rag.domain.errors import ApiError
from rag.domain.outcomes import DoneEvent, RetrievalEvent, StreamEvent, TokenEvent
from rag.observability import flush_metrics, logger
from web.responses import rag_body, retrieval_event_body

KEEPALIVE_S = 15.0
"""DESIGN 3.1; well inside API Gateway's 5-minute idle timeout for a streamed response."""
MEDIA_TYPE = "text/event-stream"
INTERNAL_ERROR = {
    "code": "internal_error",
    "message": "internal error; the request id is in the logs",
}
KEEPALIVE = b": keep-alive\n\n"

END = object()
"""What the worker hands over last, after the final event or the exception."""


def event(name: str, data: Any) -> bytes:
    """One SSE event; JSON on one `data:` line (json.dumps escapes every newline)."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def error_event(exc: BaseException) -> bytes:
    if isinstance(exc, ApiError):
        return event("error", exc.body())
    return event("error", {"error": INTERNAL_ERROR})


class PipelineStream:
    """The pipeline's events, produced on a worker thread, consumed from the event loop."""

    def __init__(self, events: Callable[[], Iterator[StreamEvent]]) -> None:
        self._events = events
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._cancelled = threading.Event()
        threading.Thread(target=self._produce, name="rag-stream", daemon=True).start()

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the server's loop is gone (shutdown): nobody is left to read
            self._cancelled.set()

    def _produce(self) -> None:
        generator: Iterator[StreamEvent] | None = None
        try:
            generator = self._events()
            for item in generator:
                if self._cancelled.is_set():
                    break
                self._put(item)
        except BaseException as exc:  # handed to the response, which answers or sends `error`
            self._put(exc)
        finally:
            close = getattr(generator, "close", None)
            if callable(close):
                close()  # after a cancel: closes the model's stream, traces the disconnect
            self._put(END)
            flush_metrics()  # the trace's metrics were recorded after the response began

    async def next(self, timeout_s: float) -> Any:
        """The next event, an exception, or END; raises TimeoutError when idle that long."""
        return await asyncio.wait_for(self._queue.get(), timeout_s)

    def cancel(self) -> None:
        self._cancelled.set()


class Encoder(Protocol):
    """How a route writes the pipeline's events and a failure after the stream began."""

    def event(self, item: StreamEvent) -> bytes: ...

    def error(self, exc: BaseException) -> bytes: ...


class RagEncoder:
    """`/rag`'s events: `retrieval`, `token`..., `done` | `error` (DESIGN 3.1)."""

    def __init__(self, *, include_context: bool) -> None:
        self.include_context = include_context

    def event(self, item: StreamEvent) -> bytes:
        if isinstance(item, TokenEvent):
            return event("token", {"text": item.text})
        if isinstance(item, RetrievalEvent):
            return event("retrieval", retrieval_event_body(item.retrieval))
        return event("done", rag_body(item.outcome, include_context=self.include_context))

    def error(self, exc: BaseException) -> bytes:
        return error_event(exc)


async def sse_body(stream: PipelineStream, first: Any, encoder: Encoder) -> AsyncIterator[bytes]:
    """The response body from the first item on (None: nothing yet, start with a keep-alive)."""
    item = first
    try:
        while True:
            if item is END:  # ended without DoneEvent: never a silently cut stream
                yield encoder.error(RuntimeError("stream ended early"))
                return
            if item is None:
                yield KEEPALIVE
            elif isinstance(item, BaseException):
                if not isinstance(item, ApiError):
                    logger.error("stream failed", error=type(item).__name__)
                yield encoder.error(item)
                return
            else:
                yield encoder.event(item)
                if isinstance(item, DoneEvent):
                    return
            try:
                item = await stream.next(KEEPALIVE_S)
            except TimeoutError:
                item = None
    finally:
        stream.cancel()
