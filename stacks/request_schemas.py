"""API Gateway body models generated from the app's own pydantic request models (one source).

API Gateway validates bodies with JSON Schema draft 4 and refuses a bad body before the Lambda
runs (and is billed). pydantic writes draft 2020-12, so the generated schema is rewritten into
what draft 4 understands: `$ref`s inlined (the model is self-contained), a numeric
`exclusiveMinimum` becomes `minimum` + `exclusiveMinimum: true`, annotations dropped. A field
the app adds (or removes) changes the gateway's model on the next synth; nothing is copied.
"""

from __future__ import annotations

from typing import Any

from rag.domain.models import RagRequest, RetrieveRequest

DRAFT4 = "http://json-schema.org/draft-04/schema#"
_ANNOTATIONS = frozenset({"title", "default", "description", "examples"})

ROUTE_MODELS: dict[str, type[RetrieveRequest]] = {"rag": RagRequest, "retrieve": RetrieveRequest}
"""The body model of each POST route, as the handler parses it."""


def gateway_schema(model: type[RetrieveRequest]) -> dict[str, Any]:
    """`model`'s JSON schema in the draft-4 form API Gateway validates with."""
    generated = model.model_json_schema(mode="validation")
    definitions = generated.pop("$defs", {})
    schema = _draft4(generated, definitions)
    return {"$schema": DRAFT4, "title": model.__name__, **schema}


def _draft4(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_draft4(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return _draft4(definitions[name], definitions)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _ANNOTATIONS:
            continue
        if key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out[key] = {name: _draft4(prop, definitions) for name, prop in value.items()}
        else:
            out[key] = _draft4(value, definitions)
    return out
