"""The app the Lambda runs (`run.sh` starts uvicorn on it behind the Lambda Web Adapter).

The adapter starts the app during the Lambda's init phase and waits for `/health`; the lifespan
builds the dependencies (models, clients) before uvicorn starts listening, so the init phase, not
the first request, pays for them. A failure there is logged and retried by the first request,
which then answers the contract's 500 instead of the function never starting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from rag.observability import logger
from rag.wiring import get_deps
from web.app import create_app


@asynccontextmanager
async def _warm(_: FastAPI) -> AsyncIterator[None]:
    try:
        get_deps()
    except Exception:
        logger.exception("dependencies not built at start; the first request retries")
    yield


app = create_app(get_deps)
app.router.lifespan_context = _warm
