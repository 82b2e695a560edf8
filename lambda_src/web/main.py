"""The app the Lambda runs (`run.sh` starts uvicorn on it behind the Lambda Web Adapter).

The adapter starts the app during the Lambda's init phase and waits for `/health`; the lifespan
builds the dependencies (models, clients) before uvicorn starts listening, so the init phase, not
the first request, pays for them. A failure there is logged and retried by the first request,
which then answers the contract's 500 instead of the function never starting.

The models start loading before anything else is imported (`wiring.start_models`): FastAPI, the
app, Powertools and the clients import while the ONNX sessions build, instead of before them.
"""

from __future__ import annotations

from rag import wiring

wiring.start_models()

# The rest imports after the models started, on purpose (E402).
import os  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402

from fastapi import FastAPI  # noqa: E402

from rag.observability import logger  # noqa: E402
from rag.wiring import get_deps  # noqa: E402
from web import snapstart  # noqa: E402
from web.app import create_app  # noqa: E402


@asynccontextmanager
async def _warm(_: FastAPI) -> AsyncIterator[None]:
    try:
        get_deps()
    except Exception:
        logger.exception("dependencies not built at start; the first request retries")
    yield


app = create_app(get_deps)
app.router.lifespan_context = _warm
snapstart.add_hooks(
    app,
    os.environ,
    before_snapshot=wiring.before_snapshot,
    after_restore=wiring.after_restore,
)
