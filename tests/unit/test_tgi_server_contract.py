"""The TGI fake keeps TGI's contract: what it accepts and what it answers validate against TGI's
own OpenAPI spec, and what TGI would reject it rejects with TGI's 422 ErrorResponse."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3

from devkit.fakes.tgi_server import (
    Fault,
    TgiServer,
    fixed,
    instance_of,
    json_or,
    response_schema,
    tgi_spec,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "author": {"type": ["string", "null"]},
        "queries": {"type": "array", "items": {"type": "string"}, "minItems": 2},
    },
    "required": ["author", "queries"],
}
GENERATE = {
    "inputs": "### Instruction:\nWho?\n\n### Response:\n",
    "parameters": {"max_new_tokens": 16, "details": True, "return_full_text": False},
}
GRAMMAR = {
    "inputs": "Who?",
    "parameters": {"max_new_tokens": 64, "grammar": {"type": "json", "value": SCHEMA}},
}
CHAT = {
    "model": "tgi",
    "messages": [{"role": "user", "content": "Who?"}],
    "max_tokens": 64,
    "response_format": {"type": "json", "value": SCHEMA},
}
COMPLETION = {"model": "tgi", "prompt": ["Who?"], "max_tokens": 16}

VALID = [
    ("/generate", GENERATE),
    ("/generate", GRAMMAR),
    ("/", GENERATE),
    ("/invocations", GENERATE),
    ("/invocations", CHAT),
    ("/invocations", COMPLETION),
    ("/v1/chat/completions", CHAT),
    ("/v1/completions", COMPLETION),
    ("/endpoints/twin/invocations", GRAMMAR),
]


@pytest.fixture
def server() -> Iterator[TgiServer]:
    with TgiServer(json_or(fixed("A short answer from the twin."))) as running:
        yield running


def _post(server: TgiServer, path: str, body: Any) -> urllib3.BaseHTTPResponse:
    return urllib3.request("POST", server.url + path, json=body, retries=False)


def _schema_text(body: Any) -> str:
    """The generated text of any of the three response shapes."""
    item = body[0] if isinstance(body, list) else body
    if "generated_text" in item:
        return str(item["generated_text"])
    choice = item["choices"][0]
    return str(choice["message"]["content"] if "message" in choice else choice["text"])


@pytest.mark.parametrize(
    ("path", "body"), VALID, ids=[f"{p}-{i}" for i, (p, _) in enumerate(VALID)]
)
def test_valid_requests_get_spec_valid_answers(server: TgiServer, path: str, body: Any) -> None:
    # Given a request valid under TGI's spec
    assert not tgi_spec().errors("SagemakerRequest" if "invocations" in path else _name(path), body)

    # When posting it
    response = _post(server, path, body)

    # Then the answer validates against the route's response schema
    assert response.status == 200
    answer = response.json()
    name, is_list = response_schema(path, body)
    items = answer if is_list else [answer]
    assert isinstance(answer, list) == is_list
    for item in items:
        assert not tgi_spec().errors(name, item)
    # And when a grammar or response_format was given, the text honours its schema
    if body in (GRAMMAR, CHAT):
        parsed = json.loads(_schema_text(answer))
        assert set(parsed) == {"author", "queries"}
        assert len(parsed["queries"]) >= 2


def _name(path: str) -> str:
    return {
        "/generate": "GenerateRequest",
        "/": "CompatGenerateRequest",
        "/v1/chat/completions": "ChatRequest",
        "/v1/completions": "CompletionRequest",
    }[path]


INVALID = [
    ("/generate", {"parameters": {"max_new_tokens": 4}}, "inputs"),
    ("/generate", {"inputs": "q", "parameters": {"temperature": 0}}, "temperature"),
    ("/generate", {"inputs": "q", "parameters": {"top_p": 1.0}}, "top_p"),
    ("/generate", {"inputs": "q", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}, "stop"),
    ("/v1/chat/completions", {"model": "tgi"}, "messages"),
    ("/v1/chat/completions", {**CHAT, "response_format": {"type": "xml"}}, "response_format"),
    ("/invocations", {"prompt": "not an array in TGI's spec"}, "prompt"),
]


@pytest.mark.parametrize(("path", "body", "field"), INVALID)
def test_invalid_requests_get_tgi_422(server: TgiServer, path: str, body: Any, field: str) -> None:
    # When posting a request TGI would reject
    response = _post(server, path, body)

    # Then the answer is a 422 ErrorResponse naming the problem
    assert response.status == 422
    error = response.json()
    assert not tgi_spec().errors("ErrorResponse", error)
    assert error["error_type"] == "validation"
    assert field in error["error"]


@pytest.mark.parametrize("status", [422, 424, 429, 500])
def test_status_faults_answer_tgi_error_bodies(server: TgiServer, status: int) -> None:
    server.queue(Fault.http_status(status))

    response = _post(server, "/generate", GENERATE)

    assert response.status == status
    assert not tgi_spec().errors("ErrorResponse", response.json())


def test_sagemaker_route_wraps_container_errors_in_a_model_error(server: TgiServer) -> None:
    # Given the container failing with 424
    server.queue(Fault.http_status(424, "Request failed during generation"))

    # When invoking through SageMaker's route
    response = _post(server, "/endpoints/twin/invocations", GENERATE)

    # Then SageMaker's ModelError envelope carries the original status and body
    assert response.status == 424
    assert response.headers["x-amzn-ErrorType"] == "ModelError"
    body = response.json()
    assert body["OriginalStatusCode"] == 424
    assert json.loads(body["OriginalMessage"])["error"] == "Request failed during generation"


def test_requests_are_recorded_and_health_answers(server: TgiServer) -> None:
    _post(server, "/generate", GENERATE)
    health = urllib3.request("GET", server.url + "/health")
    ping = urllib3.request("GET", server.url + "/ping")

    assert (health.status, ping.status) == (200, 200)
    assert [(r.method, r.path) for r in server.requests] == [
        ("POST", "/generate"),
        ("GET", "/health"),
        ("GET", "/ping"),
    ]
    assert server.requests[0].body == GENERATE


def test_instance_of_builds_values_valid_for_simple_schemas() -> None:
    import jsonschema

    jsonschema.validate(instance_of(SCHEMA), SCHEMA)
    assert instance_of({"enum": ["a", "b"]}) == "a"
