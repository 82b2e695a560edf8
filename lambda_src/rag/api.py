"""The HTTP API (DESIGN 3.1) on Powertools' REST resolver: thin routes, one error shape.

Routes parse the body, call one pipeline function and map its outcome. Every failure leaves
as `{"error": {"code", "message"}}`: ApiErrors with their status (and Retry-After), unknown
routes 404, known routes with the wrong method 405, anything unexpected a generic 500 whose
details only reach the log. Bodies are parsed explicitly (not `enable_validation`) so the
400/413/415 messages follow the contract.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError

from rag import pipeline
from rag.errors import (
    ApiError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from rag.models import (
    ContextChunk,
    Filters,
    RagRequest,
    RagResponse,
    RetrieveRequest,
    RetrieveResponse,
    Source,
    Usage,
    loads_json_body,
    parse_request,
)
from rag.observability import logger, tracer
from rag.pipeline import AnswerOutcome, Deps, RetrievalOutcome
from rag.ports import Chunk

MAX_BODY_BYTES = 16 * 1024
"""A 2000-character query with every option fits many times over; more is not a request."""
ROUTE_METHODS: dict[str, tuple[str, ...]] = {
    "/rag": ("POST",),
    "/retrieve": ("POST",),
    "/health": ("GET",),
}
INTERNAL_ERROR_MESSAGE = "internal error; the request id is in the logs"


def error_response(error: ApiError) -> Response[str]:
    return _json(error.status, error.body(), headers=error.headers())


R = TypeVar("R", bound=RetrieveRequest)


def _time_left_s(app: APIGatewayRestResolver) -> float | None:
    """The invocation's remaining time (Lambda, or the local server's stand-in context)."""
    context = getattr(app, "lambda_context", None)
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return remaining() / 1000 if callable(remaining) else None


def _json(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response[str]:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps(body, ensure_ascii=False),
        headers=headers or {},
    )


def build_app(deps_factory: Callable[[], Deps]) -> APIGatewayRestResolver:
    """The resolver with its routes; `deps_factory` is called per request (it caches)."""
    app = APIGatewayRestResolver()

    def read_json_body() -> Any:
        event = app.current_event
        raw = _raw_body(event.body, is_base64=bool(event.is_base64_encoded))
        if len(raw) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"body: larger than {MAX_BODY_BYTES} bytes")
        content_type = event.headers.get("content-type", "")  # case-insensitive in v3
        if not _is_json_type(content_type or ""):
            raise UnsupportedMediaType("Content-Type must be application/json")
        if not raw.strip():
            raise BadRequest("body: a JSON object is required", code="invalid_json")
        try:
            return loads_json_body(raw)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise BadRequest("body: not valid JSON", code="invalid_json") from None

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    def parsed(name: Literal["rag", "retrieve"], model: type[R], deps: Deps) -> R:
        """The request body as `model`; a refused body still leaves its trace."""
        try:
            return parse_request(
                model,
                read_json_body(),
                max_new_tokens_limit=deps.profile.generation.max_new_tokens_limit,
            )
        except ApiError as exc:
            pipeline.emit_rejected(name, exc, deps)
            raise

    @app.post("/rag")
    @tracer.capture_method(capture_response=False)
    def rag_route() -> Response[str]:
        deps = deps_factory()
        req = parsed("rag", RagRequest, deps)
        outcome = pipeline.answer(req, deps, time_left_s=_time_left_s(app))
        return _json(200, _rag_response(outcome, include_context=req.include_context).to_body())

    @app.post("/retrieve")
    @tracer.capture_method(capture_response=False)
    def retrieve_route() -> Response[str]:
        deps = deps_factory()
        outcome = pipeline.retrieve(parsed("retrieve", RetrieveRequest, deps), deps)
        return _json(200, _retrieve_response(outcome).to_body())

    @app.exception_handler(ApiError)
    def handle_api_error(exc: ApiError) -> Response[str]:
        if exc.status >= 500:
            logger.warning("request failed", error_code=exc.code, status=exc.status)
        return error_response(exc)

    @app.not_found
    def handle_not_found(_: NotFoundError) -> Response[str]:
        path = app.current_event.path
        allowed = ROUTE_METHODS.get(path)
        if allowed is None:
            return error_response(NotFound(f"no route {path}"))
        method = app.current_event.http_method.upper()
        response = error_response(MethodNotAllowed(f"{method} not allowed on {path}"))
        response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.exception_handler(Exception)
    def handle_unexpected(exc: Exception) -> Response[str]:
        logger.exception("unhandled error")
        return _json(500, {"error": {"code": "internal_error", "message": INTERNAL_ERROR_MESSAGE}})

    return app


def _raw_body(body: str | None, *, is_base64: bool) -> bytes:
    if not body:
        return b""
    if not is_base64:
        return body.encode("utf-8", "surrogatepass")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("body: not valid base64", code="invalid_json") from None


def _is_json_type(content_type: str) -> bool:
    """application/json (any parameters) or a +json type. A missing header is accepted: some
    clients (and the API Gateway console) send JSON without one."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in ("", "application/json") or media_type.endswith("+json")


def _source(chunk: Chunk) -> Source:
    return Source(
        id=chunk.id,
        document_id=chunk.document_id,
        collection=chunk.collection,
        author_full_name=chunk.author_full_name,
        platform=chunk.platform,
        link=chunk.link,
        score=chunk.score,
    )


def _context_chunk(chunk: Chunk) -> ContextChunk:
    return ContextChunk(**_source(chunk).model_dump(), content=chunk.content)


def _rag_response(outcome: AnswerOutcome, *, include_context: bool) -> RagResponse:
    return RagResponse(
        answer=outcome.answer,
        sources=[_source(c) for c in outcome.sources],
        model=outcome.model,
        usage=Usage(
            prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens
        ),
        trace_id=outcome.trace_id,
        timings_ms=outcome.timings_ms,
        context=[_context_chunk(c) for c in outcome.sources] if include_context else None,
    )


def _retrieve_response(outcome: RetrievalOutcome) -> RetrieveResponse:
    return RetrieveResponse(
        expanded_queries=outcome.expanded_queries,
        filters=Filters(author=outcome.author),
        chunks=[_context_chunk(c) for c in outcome.chunks],
        timings_ms=outcome.timings_ms,
        trace_id=outcome.trace_id,
    )
