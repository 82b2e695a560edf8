"""The chat page (DESIGN 3.1 `GET /`): static files from `web/static`, never an LLM call.

These routes are the only ones that need no API key (API Gateway and local mode both exempt
exactly `PUBLIC_PATHS`), so they serve files from a fixed list; the only thing read from the
request is API Gateway's `path`, to add a missing trailing slash (`trailing_slash_redirect`).
The page is plain HTML, CSS and JavaScript in separate files, so the Content-Security-Policy
allows scripts and styles from this origin only: no inline code, no other host.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import Response

STATIC_DIR = Path(__file__).parent / "static"
PAGE_FILE = "index.html"
STATIC_ROUTE = "static"
"""`/static/{name}` serves the files below; API Gateway's keyless `static/{name}` resource."""
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate every load: a deploy changes the files under the same names.
    "Cache-Control": "no-cache",
}
PUBLIC_PATHS = ("/", f"/{STATIC_ROUTE}/")
"""`GET` on "/" and under "/static/" needs no API key; every other route does."""
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
"""A stage or base-path segment; anything else (a backslash, a colon) is never redirected to."""


def is_public(method: str, path: str) -> bool:
    return method in ("GET", "HEAD") and (path == "/" or path.startswith(PUBLIC_PATHS[1]))


def trailing_slash_redirect(request_context: dict[str, Any]) -> str | None:
    """Where to send a browser that opened the page without its trailing slash, else None.

    Deployed, `https://<api>/v1` and `https://<api>/v1/` both reach the root resource, but a page
    at `/v1` resolves its relative `static/...` links against `/` and loses the stage. API
    Gateway's request context (forwarded by the Lambda Web Adapter) carries `path`, the path as
    the browser sent it, stage or base path included; when it lacks the slash, the answer is a
    redirect to its last segment plus "/", relative, so any stage or custom-domain base path
    keeps working. Local mode has no request context and serves the page at "/" as is. Only a
    plain segment is redirected to, so the Location can never leave this origin."""
    path = request_context.get("path")
    if not isinstance(path, str) or path.endswith("/"):
        return None
    segment = path.rsplit("/", 1)[-1]
    return f"{segment}/" if _PATH_SEGMENT.fullmatch(segment) else None


@cache
def static_files() -> dict[str, bytes]:
    """Every servable file, read once: a name not in here is a 404, whatever it looks like."""
    return {
        path.name: path.read_bytes()
        for path in sorted(STATIC_DIR.iterdir())
        if path.suffix in MEDIA_TYPES and path.name != PAGE_FILE
    }


@cache
def page() -> bytes:
    return (STATIC_DIR / PAGE_FILE).read_bytes()


def static_response(name: str, content: bytes) -> Response:
    return Response(
        content=content,
        media_type=MEDIA_TYPES[Path(name).suffix],
        headers=SECURITY_HEADERS,
    )
