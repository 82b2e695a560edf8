"""CORS on the app's own responses (the Fetch standard's CORS protocol).

API Gateway answers the preflight (OPTIONS, a MOCK integration) and its own error responses
(stacks/constructs/rag_api.py); a Lambda proxy integration's responses carry only the headers
the function returns, so the app adds `Access-Control-Allow-Origin` itself for an allowed
Origin, and `Vary: Origin` so a cache never serves one origin's answer to another.
The allowed origins are the stack's `cors_origins`, passed as `CORS_ORIGINS`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the stacks import the constants at synth, where starlette is not installed
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

ALLOW_METHODS = ("GET", "POST", "OPTIONS")
ALLOW_HEADERS = ("Content-Type", "X-Api-Key", "Authorization")
"""What a preflight allows (API Gateway's, and local mode's): JSON bodies and the API key
(x-api-key, or Authorization: Bearer as OpenAI clients send it)."""


def request_origin(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"origin":
            return str(value.decode("latin-1"))
    return None


class CorsHeaders:
    """Adds the CORS response headers when the request carries an Origin. `origins` is called
    then (not at import): it reads the container's settings, which the routes build anyway."""

    def __init__(self, app: ASGIApp, *, origins: Callable[[], Collection[str]]) -> None:
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = request_origin(scope) if scope["type"] == "http" else None
        if origin is None:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                allowed = self._allowed()
                if allowed:
                    headers = [*message.get("headers", []), (b"vary", b"Origin")]
                    if origin in allowed:
                        headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _allowed(self) -> Collection[str]:
        try:
            return self.origins()
        except Exception:  # no settings, no CORS: the response itself says what failed
            return ()
