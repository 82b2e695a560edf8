"""Request and response bodies of the HTTP API (DESIGN 3.1).

Requests are validated strictly (no "3" for 3, unknown fields rejected); the one limit that
depends on the deployed model, `generation.max_new_tokens`, comes in through the validation
context as `max_new_tokens_limit`. `parse_request` turns every failure into a `BadRequest` whose
message names the field, e.g. "k: must be <= 20".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from rag.domain.errors import BadRequest

MAX_QUERY_CHARS = 2000
MAX_AUTHOR_CHARS = 200
MAX_K = 20
DEFAULT_K = 3
LIMIT_CONTEXT_KEY = "max_new_tokens_limit"

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


def _clean_text(value: str, *, max_chars: int) -> str:
    text = value.strip()
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    if not text:
        raise ValueError("must not be empty")
    if len(text) > max_chars:
        raise ValueError(f"must be at most {max_chars} characters")
    return text


class GenerationRequest(BaseModel):
    model_config = _STRICT

    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)

    @field_validator("max_new_tokens")
    @classmethod
    def _within_model_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        limit = (info.context or {}).get(LIMIT_CONTEXT_KEY)
        if value is not None and limit is not None and value > limit:
            raise ValueError(f"must be <= {limit}")
        return value


class RetrieveRequest(BaseModel):
    model_config = _STRICT

    # Stated in the schema so the API Gateway body model generated from this class refuses an
    # empty query before a Lambda runs. The maximum lengths count after trimming, which JSON
    # Schema cannot say: they stay with the validators below.
    query: str = Field(json_schema_extra={"minLength": 1})
    k: int = Field(default=DEFAULT_K, ge=1, le=MAX_K)
    author: str | None = None
    expand: bool = True

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        return _clean_text(value, max_chars=MAX_QUERY_CHARS)

    @field_validator("author")
    @classmethod
    def _author(cls, value: str | None) -> str | None:
        return None if value is None else _clean_text(value, max_chars=MAX_AUTHOR_CHARS)


class RagRequest(RetrieveRequest):
    generation: GenerationRequest | None = None
    include_context: bool = False
    stream: bool = False
    """Answer as server-sent events (DESIGN 3.1); `Accept: text/event-stream` does the same."""


class Source(BaseModel):
    id: str
    document_id: str | None = None
    """The payload's `document_id`: the source document, shared by all of its chunks."""
    collection: str
    author_full_name: str | None
    platform: str | None
    link: str | None
    score: float


class ContextChunk(Source):
    content: str


class Usage(BaseModel):
    prompt_tokens: int | None
    completion_tokens: int | None


class RagResponse(BaseModel):
    answer: str
    sources: list[Source]
    model: str
    usage: Usage
    trace_id: str
    timings_ms: dict[str, float]
    context: list[ContextChunk] | None = None
    """The chunks as placed in the prompt; only when the request set include_context."""

    def to_body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"context"} if self.context is None else None)


class Filters(BaseModel):
    author: str | None


class RetrieveResponse(BaseModel):
    expanded_queries: list[str]
    filters: Filters
    chunks: list[ContextChunk]
    timings_ms: dict[str, float]
    trace_id: str

    def to_body(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


_Req = TypeVar("_Req", bound=RetrieveRequest)


def parse_request(model: type[_Req], body: Any, *, max_new_tokens_limit: int) -> _Req:
    """Validate a decoded JSON body; raise BadRequest naming the field(s)."""
    if not isinstance(body, dict):
        raise BadRequest("body: must be a JSON object")
    try:
        return model.model_validate(body, context={LIMIT_CONTEXT_KEY: max_new_tokens_limit})
    except ValidationError as exc:
        raise BadRequest(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """'field: problem' for each error, joined by '; '. Never echoes the submitted value."""
    return "; ".join(_describe_one(err) for err in exc.errors(include_input=False))


def _describe_one(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "body"
    ctx = err.get("ctx") or {}
    kind = err["type"]
    messages: dict[str, Callable[[], str]] = {
        "less_than_equal": lambda: f"must be <= {ctx.get('le')}",
        "greater_than_equal": lambda: f"must be >= {ctx.get('ge')}",
        "greater_than": lambda: f"must be > {ctx.get('gt')}",
        "less_than": lambda: f"must be < {ctx.get('lt')}",
        "extra_forbidden": lambda: "unknown field",
        "missing": lambda: "field required",
        "int_type": lambda: "must be an integer",
        "float_type": lambda: "must be a number",
        "finite_number": lambda: "must be a finite number",
        "string_type": lambda: "must be a string",
        "bool_type": lambda: "must be true or false",
        "model_type": lambda: "must be a JSON object",
        "dataclass_type": lambda: "must be a JSON object",
        "value_error": lambda: str(ctx.get("error", err["msg"])),
    }
    describe = messages.get(kind)
    return f"{loc}: {describe() if describe else err['msg']}"


class JsonBodyError(ValueError):
    """A body that parses as JSON but cannot be served; the message says why."""


def loads_json_body(raw: bytes) -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity, valid Unicode, nesting Python can hold.
    Raises ValueError when it is not JSON, JsonBodyError when it is but cannot be used."""

    def _reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        # An escaped lone surrogate ("\\ud800") decodes to a str no UTF-8 output (response,
        # log, trace) can hold; I-JSON (RFC 7493 2.1) forbids it, so it is refused here.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise JsonBodyError("body: nested too deeply") from None
    except UnicodeEncodeError:
        raise JsonBodyError("body: a string holds a lone surrogate (not valid Unicode)") from None
    return value
