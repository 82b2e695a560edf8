"""The HTTP API's OpenAPI 3.1 description (docs/openapi.json), generated from rag.domain.models.

    python -m tools.openapi            # rewrite docs/openapi.json
    python -m tools.openapi --check    # exit 1 when the committed file is out of date

Request and response bodies are the pydantic models' JSON schemas; the limits that live in
validators rather than in field types (query and author length, the model's max_new_tokens
limit) are added here from the same constants, so the description says what the API enforces.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from rag.domain.models import (
    MAX_AUTHOR_CHARS,
    MAX_QUERY_CHARS,
    GenerationRequest,
    RagRequest,
    RagResponse,
    RetrieveRequest,
    RetrieveResponse,
)
from rag.settings import DEFAULT_PROFILE
from web.app import MAX_BODY_BYTES, OPENAI_ROUTES, ROUTE_METHODS

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "openapi.json"
REF = "#/components/schemas/{model}"
JSON = "application/json"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Error",
    "description": "Every failure (DESIGN 3.1): never a stack trace, never a secret.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "minLength": 1},
                "message": {"type": "string", "minLength": 1},
            },
            "required": ["code", "message"],
            "additionalProperties": False,
        }
    },
    "required": ["error"],
    "additionalProperties": False,
}
HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Health",
    "properties": {"status": {"const": "ok"}},
    "required": ["status"],
    "additionalProperties": False,
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
ERRORS: dict[str, tuple[str, bool]] = {
    "400": ("Validation failed; the message names the field.", False),
    "403": ("Missing or invalid API key (API Gateway).", False),
    "404": ("No such route.", False),
    "405": ("Method not allowed on this route (see the Allow header).", False),
    "413": (f"Body larger than {MAX_BODY_BYTES} bytes.", False),
    "415": ("Body is not JSON (Content-Type).", False),
    "429": ("Throttled or the model is overloaded.", True),
    "502": ("The model or Qdrant failed, or the service failed.", False),
    "503": ("The model is not available (scaled to zero, creating, not configured).", True),
    "504": ("A dependency timed out.", False),
}
BODY_ERRORS = ("400", "403", "404", "405", "413", "415", "429", "502", "503", "504")
HEALTH_ERRORS = ("403", "404", "405")


def _tighten(schemas: dict[str, Any]) -> None:
    """Limits enforced by validators, which pydantic's schema cannot see."""
    # Lengths count after surrounding whitespace is trimmed, which JSON Schema's maxLength cannot
    # say: a padded value over the limit is accepted, so the limit is stated in words only.
    for name in ("RetrieveRequest", "RagRequest"):
        properties = schemas[name]["properties"]
        properties["query"].update(
            minLength=1,
            description=f"At most {MAX_QUERY_CHARS} characters once trimmed; no NUL.",
        )
        author = properties["author"]
        author["description"] = (
            f"Exact author_full_name filter (skips self-query); at most {MAX_AUTHOR_CHARS} "
            "characters once trimmed."
        )
        for option in author.get("anyOf", []):
            if option.get("type") == "string":
                option.update(minLength=1)
    limit = DEFAULT_PROFILE.generation.max_new_tokens_limit
    tokens = schemas["GenerationRequest"]["properties"]["max_new_tokens"]
    for option in tokens.get("anyOf", []):
        if option.get("type") == "integer":
            option["maximum"] = limit
    tokens["description"] = f"At most the model's max_new_tokens_limit ({limit} by default)."


SSE = "text/event-stream"
SSE_EVENTS: dict[str, dict[str, Any]] = {
    "retrieval": {
        "type": "object",
        "required": ["sources", "filters", "expanded_queries", "trace_id"],
        "properties": {
            "sources": {"type": "array", "items": {"$ref": REF.format(model="Source")}},
            "filters": {"$ref": REF.format(model="Filters")},
            "expanded_queries": {"type": "array", "items": {"type": "string"}},
            "trace_id": {"type": "string"},
        },
    },
    "token": {
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string"}},
    },
    "done": {"$ref": REF.format(model="RagResponse")},
    "error": {"$ref": REF.format(model="Error")},
}


def _sse_event(name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": name},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data,
            },
        },
    }


def _responses(ok_schema: str, errors: tuple[str, ...]) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {
            "description": "OK",
            "content": {JSON: {"schema": {"$ref": REF.format(model=ok_schema)}}},
        }
    }
    for status in errors:
        description, retry = ERRORS[status]
        response: dict[str, Any] = {
            "description": description,
            "content": {JSON: {"schema": {"$ref": REF.format(model="Error")}}},
        }
        if retry:
            response["headers"] = RETRY_AFTER
        if status == "405":
            response["headers"] = {"Allow": {"schema": {"type": "string"}}}
        responses[status] = response
    return responses


def _post(summary: str, request: str, response: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "operationId": request.removesuffix("Request").lower(),
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": {"$ref": REF.format(model=request)}}},
            },
            "responses": _responses(response, BODY_ERRORS),
        }
    }


def build() -> dict[str, Any]:
    models: list[type[BaseModel]] = [RetrieveRequest, RagRequest, GenerationRequest]
    outputs: list[type[BaseModel]] = [RagResponse, RetrieveResponse]
    _, defs = models_json_schema(
        [(m, "validation") for m in models] + [(m, "serialization") for m in outputs],
        ref_template=REF,
    )
    schemas: dict[str, Any] = dict(sorted(defs["$defs"].items()))
    _tighten(schemas)
    schemas["Error"] = ERROR_SCHEMA
    schemas["Health"] = HEALTH_SCHEMA
    rag = _post("Answer a query from the twin's content", "RagRequest", "RagResponse")
    rag["post"]["responses"]["200"]["content"][SSE] = {
        # OpenAPI 3.2's way to describe a stream: the schema of one event, `data` as JSON text.
        "schema": {"oneOf": [_sse_event(name, data) for name, data in SSE_EVENTS.items()]},
        "description": "With `stream: true` or `Accept: text/event-stream`: server-sent events "
        "`retrieval`, `token` (one per piece of text), then `done` (the RagResponse, with "
        "`timings_ms.time_to_first_token`) or `error` (an Error); `: keep-alive` comments.",
    }
    paths = {
        "/rag": rag,
        "/retrieve": _post(
            "Retrieve the chunks a query would use, without generation",
            "RetrieveRequest",
            "RetrieveResponse",
        ),
        "/": {
            "get": {
                "summary": "The chat page (static HTML; its script and style under /static/)",
                "operationId": "chatPage",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The page, with a strict Content-Security-Policy",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/health": {
            "get": {
                "summary": "Liveness, no downstream calls",
                "operationId": "health",
                "responses": _responses("Health", HEALTH_ERRORS),
            }
        },
    }
    # A new route must be described here; the OpenAI-compatible routes follow OpenAI's own
    # published API reference instead (web.openai_api; tests/integration/test_openai_compat.py).
    assert set(paths) == set(ROUTE_METHODS) - set(OPENAI_ROUTES)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "LLM twin RAG API",
            "version": "1",
            "description": "Generated by `python -m tools.openapi` from lambda_src/rag/domain/models.py.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
        },
        "security": [{"apiKey": []}],
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.openapi", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if docs/openapi.json is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            sys.stderr.write(f"{OUTPUT} is out of date: run `python -m tools.openapi`\n")
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    sys.stdout.write(f"wrote {OUTPUT}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
