"""The HTTP API (DESIGN 3.1) as one FastAPI app: thin routes, one error shape.

Routes parse the body, call one pipeline function and map its outcome. Every failure leaves as
`{"error": {"code", "message"}}`: ApiErrors with their status (and Retry-After), unknown routes
404, known routes with the wrong method 405 (with `Allow`), anything unexpected a generic 500
whose details only reach the log. Bodies are parsed explicitly (not FastAPI's body models) so
the 400/413/415 messages follow the contract.

The OpenAI-compatible routes (`web.openai_api`) answer `POST /v1/chat/completions`,
`GET /v1/models` and `GET /v1/models/{id}` on the same pipeline, with OpenAI's error shape. They are served twice: under
`/v1` (local mode, where `base_url` is `http://127.0.0.1:8000/v1`) and without it, because
deployed the `v1` in `https://<api>/v1/chat/completions` is the API Gateway stage, and the app
sees the resource path `/chat/completions` (the Lambda Web Adapter forwards the event's `path`).

A streamed `/rag` (`"stream": true` or `Accept: text/event-stream`) answers server-sent events
(`web.sse`). Its status is decided by the first thing the pipeline produces: a failure before
any event (validation, no LLM, an endpoint scaled to zero) is the plain JSON error; once an event
or a keep-alive has been sent, a failure is an `error` event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from rag.domain import pipeline
from rag.domain.deps import Deps
from rag.domain.errors import (
    ApiError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from rag.domain.models import (
    JsonBodyError,
    RagRequest,
    RetrieveRequest,
    loads_json_body,
    parse_request,
)
from rag.observability import flush_metrics, logger
from web import openai_api, page, sse
from web.cors import CorsHeaders
from web.responses import rag_body, retrieve_body

MAX_BODY_BYTES = 16 * 1024
"""A 2000-character query with every option fits many times over; more is not a request."""
OPENAI_PREFIXES = ("/v1", "")
"""Local base URL .../v1; deployed, the stage is the /v1 (see the module docstring)."""
OPENAI_ROUTES: dict[str, tuple[str, ...]] = {
    f"{prefix}{path}": methods
    for prefix in OPENAI_PREFIXES
    for path, methods in (("/chat/completions", ("POST",)), ("/models", ("GET",)))
}
ROUTE_METHODS: dict[str, tuple[str, ...]] = {
    "/": ("GET",),
    "/rag": ("POST",),
    "/retrieve": ("POST",),
    "/health": ("GET",),
    **OPENAI_ROUTES,
}
INTERNAL_ERROR_MESSAGE = "internal error; the request id is in the logs"
LAMBDA_CONTEXT_HEADER = "x-amzn-lambda-context"
"""The Lambda Web Adapter forwards the invocation's context here (JSON; `deadline` in epoch ms)."""
REQUEST_CONTEXT_HEADER = "x-amzn-request-context"
"""... and API Gateway's request context (JSON; `requestId`)."""

R = TypeVar("R", bound=RetrieveRequest)


def json_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    return Response(
        content=json.dumps(body, ensure_ascii=False),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(error: ApiError) -> Response:
    return json_response(error.status, error.body(), headers=error.headers())


def openai_error_response(error: ApiError) -> Response:
    return json_response(error.status, openai_api.error_body(error), headers=error.headers())


def time_left_s(request: Request) -> float | None:
    """What the Lambda invocation has left (None outside Lambda)."""
    context = _header_json(request, LAMBDA_CONTEXT_HEADER)
    deadline_ms = context.get("deadline")
    if not isinstance(deadline_ms, (int, float)):
        return None
    return deadline_ms / 1000 - time.time()


def _header_json(request: Request, name: str) -> dict[str, Any]:
    raw = request.headers.get(name)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def wants_stream(request: Request, req: RagRequest) -> bool:
    accept = request.headers.get("accept", "")
    return req.stream or any(
        part.split(";", 1)[0].strip().lower() == sse.MEDIA_TYPE for part in accept.split(",")
    )


def create_app(deps_factory: Callable[[], Deps]) -> FastAPI:  # noqa: C901 - counts its routes: FastAPI route functions are closures here, each small
    """The app with its routes; `deps_factory` is called per request (it caches)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(CorsHeaders, origins=lambda: deps_factory().settings.cors_origins)

    async def read_json_body(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"body: larger than {MAX_BODY_BYTES} bytes")
        content_type = request.headers.get("content-type", "")
        # A missing header is accepted: some clients (and the API Gateway console) send JSON
        # without one. Local mode requires it (tools/local_server.py: no CORS preflight without).
        if content_type and not is_json_type(content_type):
            raise UnsupportedMediaType("Content-Type must be application/json")
        if not raw.strip():
            raise BadRequest("body: a JSON object is required", code="invalid_json")
        try:
            return loads_json_body(raw)
        except JsonBodyError as exc:
            raise BadRequest(str(exc), code="invalid_json") from None
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise BadRequest("body: not valid JSON", code="invalid_json") from None

    async def parsed(
        request: Request, name: Literal["rag", "retrieve"], model: type[R], deps: Deps
    ) -> R:
        """The request body as `model`; a refused body still leaves its trace."""
        try:
            return parse_request(
                model,
                await read_json_body(request),
                max_new_tokens_limit=deps.profile.generation.max_new_tokens_limit,
            )
        except ApiError as exc:
            pipeline.emit_rejected(name, exc, deps)
            raise

    @app.get("/health")
    async def health() -> Response:
        return json_response(200, {"status": "ok"})

    @app.get("/")
    async def chat_page(request: Request) -> Response:
        slash = page.trailing_slash_redirect(_header_json(request, REQUEST_CONTEXT_HEADER))
        if slash is not None:
            return Response(status_code=308, headers={"Location": slash})
        return page.static_response(page.PAGE_FILE, page.page())

    @app.get(f"/{page.STATIC_ROUTE}/{{name}}")
    async def static_file(name: str) -> Response:
        content = page.static_files().get(name)
        if content is None:
            return error_response(NotFound(f"no file {name}"))
        return page.static_response(name, content)

    @app.post("/rag")
    async def rag_route(request: Request) -> Response:
        async def run() -> Response:
            deps = await run_in_threadpool(deps_factory)
            req = await parsed(request, "rag", RagRequest, deps)
            left_s = time_left_s(request)
            if wants_stream(request, req):
                return await stream_response(
                    lambda: pipeline.answer_stream(req, deps, time_left_s=left_s),
                    sse.RagEncoder(include_context=req.include_context),
                )
            outcome = await run_in_threadpool(pipeline.answer, req, deps, time_left_s=left_s)
            return json_response(200, rag_body(outcome, include_context=req.include_context))

        return await _contract(request, run)

    @app.post("/retrieve")
    async def retrieve_route(request: Request) -> Response:
        async def run() -> Response:
            deps = await run_in_threadpool(deps_factory)
            req = await parsed(request, "retrieve", RetrieveRequest, deps)
            outcome = await run_in_threadpool(pipeline.retrieve, req, deps)
            return json_response(200, retrieve_body(outcome))

        return await _contract(request, run)

    async def chat_completions(request: Request) -> Response:
        async def run() -> Response:
            deps = await run_in_threadpool(deps_factory)
            try:
                call = openai_api.parse_chat(
                    await read_json_body(request),
                    max_new_tokens_limit=deps.profile.generation.max_new_tokens_limit,
                )
            except ApiError as exc:
                pipeline.emit_rejected("rag", exc, deps)
                raise
            left_s = time_left_s(request)
            if call.stream:
                return await stream_response(
                    lambda: pipeline.answer_stream(
                        call.rag, deps, time_left_s=left_s, conversation=call.conversation
                    ),
                    openai_api.ChunkEncoder(call),
                )
            outcome = await run_in_threadpool(
                pipeline.answer,
                call.rag,
                deps,
                time_left_s=left_s,
                conversation=call.conversation,
            )
            return json_response(200, openai_api.completion_body(outcome, citations=call.citations))

        return await _contract(request, run, render=openai_error_response)

    async def models() -> Response:
        return json_response(200, openai_api.models_body())

    async def model(request: Request, model_id: str) -> Response:
        async def run() -> Response:
            return json_response(200, openai_api.model_body(model_id))

        return await _contract(request, run, render=openai_error_response)

    for prefix in OPENAI_PREFIXES:
        app.add_api_route(f"{prefix}/chat/completions", chat_completions, methods=["POST"])
        app.add_api_route(f"{prefix}/models", models, methods=["GET"])
        app.add_api_route(f"{prefix}/models/{{model_id}}", model, methods=["GET"])

    @app.exception_handler(StarletteHTTPException)
    async def routing_error(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path
        allowed = ROUTE_METHODS.get(path)
        render = openai_error_response if is_openai_path(path) else error_response
        if exc.status_code != 405 or allowed is None:
            return render(NotFound(f"no route {path}"))
        response = render(MethodNotAllowed(f"{request.method} not allowed on {path}"))
        response.headers["Allow"] = ", ".join(allowed)
        return response

    return app


async def _contract(
    request: Request,
    run: Callable[[], Awaitable[Response]],
    render: Callable[[ApiError], Response] = error_response,
) -> Response:
    """Runs a route with the request's correlation id, mapping every failure to the route's
    error shape (`render`)."""
    request_id = _header_json(request, REQUEST_CONTEXT_HEADER).get("requestId")
    logger.set_correlation_id(request_id if isinstance(request_id, str) else None)
    try:
        return await run()
    except ApiError as exc:
        if exc.status >= 500:
            logger.warning("request failed", error_code=exc.code, status=exc.status)
        return render(exc)
    except Exception:
        logger.exception("unhandled error")
        return render(ApiError(INTERNAL_ERROR_MESSAGE))
    finally:
        flush_metrics()


async def stream_response(events: Callable[[], Any], encoder: sse.Encoder) -> Response:
    stream = sse.PipelineStream(events)
    try:
        first = await stream.next(sse.KEEPALIVE_S)
    except TimeoutError:
        first = None  # nothing yet: start the stream with a keep-alive
    else:
        if isinstance(first, BaseException):
            stream.cancel()
            raise first  # before the first byte: the plain status and JSON error
    return StreamingResponse(
        sse.sse_body(stream, first, encoder),
        media_type=sse.MEDIA_TYPE,
        # Proxies must not buffer the events (nginx honours X-Accel-Buffering).
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def is_openai_path(path: str) -> bool:
    """The OpenAI-compatible routes, `/models/{id}` included: their errors take OpenAI's shape."""
    return path in OPENAI_ROUTES or any(
        path.startswith(f"{prefix}/models/") for prefix in OPENAI_PREFIXES
    )


def is_json_type(content_type: str) -> bool:
    """application/json (any parameters) or a +json type (RFC 6839 section 3.1)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")
