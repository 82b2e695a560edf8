"""API request validation (field-naming messages) and response shapes."""

from __future__ import annotations

from typing import Any

import pytest

from rag.domain.errors import BadRequest
from rag.domain.models import (
    ContextChunk,
    Filters,
    RagRequest,
    RagResponse,
    RetrieveRequest,
    RetrieveResponse,
    Usage,
    loads_json_body,
    parse_request,
)

LIMIT = 1024


def rag(body: object) -> RagRequest:
    return parse_request(RagRequest, body, max_new_tokens_limit=LIMIT)


def rejection(body: object, model: type = RagRequest) -> str:
    with pytest.raises(BadRequest) as raised:
        parse_request(model, body, max_new_tokens_limit=LIMIT)
    assert raised.value.status == 400
    return raised.value.message


def test_the_handbook_body_alone_is_valid_with_defaults() -> None:
    req = rag({"query": "  Write a post about RAG  "})

    assert req.query == "Write a post about RAG"
    assert (req.k, req.author, req.expand, req.generation, req.include_context) == (
        3,
        None,
        True,
        None,
        False,
    )


def test_every_option_is_accepted_within_its_bounds() -> None:
    req = rag(
        {
            "query": "q",
            "k": 20,
            "author": "Paul Iusztin",
            "expand": False,
            "include_context": True,
            "generation": {"max_new_tokens": LIMIT, "temperature": 0, "top_p": 1},
        }
    )

    assert req.generation is not None
    assert (req.generation.max_new_tokens, req.generation.temperature) == (LIMIT, 0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"query": "q", "k": 21}, "k: must be <= 20"),
        ({"query": "q", "k": 0}, "k: must be >= 1"),
        ({"query": "q", "k": "3"}, "k: must be an integer"),
        ({"query": "q", "k": True}, "k: must be an integer"),
        ({"query": "   "}, "query: must not be empty"),
        ({"query": "x" * 2001}, "query: must be at most 2000 characters"),
        ({"query": "a\x00b"}, "query: must not contain NUL characters"),
        ({"query": 5}, "query: must be a string"),
        ({}, "query: field required"),
        ({"query": "q", "author": ""}, "author: must not be empty"),
        ({"query": "q", "author": "x" * 201}, "author: must be at most 200 characters"),
        ({"query": "q", "expand": "yes"}, "expand: must be true or false"),
        ({"query": "q", "surprise": 1}, "surprise: unknown field"),
        (
            {"query": "q", "generation": {"max_new_tokens": LIMIT + 1}},
            f"generation.max_new_tokens: must be <= {LIMIT}",
        ),
        (
            {"query": "q", "generation": {"max_new_tokens": 0}},
            "generation.max_new_tokens: must be >= 1",
        ),
        (
            {"query": "q", "generation": {"temperature": 2.5}},
            "generation.temperature: must be <= 2",
        ),
        ({"query": "q", "generation": {"top_p": 0}}, "generation.top_p: must be > 0"),
        ({"query": "q", "generation": {"top_p": 1.5}}, "generation.top_p: must be <= 1"),
        ({"query": "q", "generation": {"seed": 1}}, "generation.seed: unknown field"),
        ({"query": "q", "generation": []}, "generation: must be a JSON object"),
    ],
)
def test_invalid_bodies_name_the_field(body: dict[str, Any], message: str) -> None:
    assert rejection(body).startswith(message)


def test_retrieve_has_no_generation_options() -> None:
    assert rejection({"query": "q", "generation": {}}, RetrieveRequest) == (
        "generation: unknown field"
    )
    assert rejection({"query": "q", "include_context": True}, RetrieveRequest) == (
        "include_context: unknown field"
    )


def test_a_non_object_body_is_rejected() -> None:
    assert rejection(["q"]) == "body: must be a JSON object"


def test_several_errors_are_all_named() -> None:
    assert rejection({"query": "", "k": 50}) == "query: must not be empty; k: must be <= 20"


def test_json_bodies_are_strict() -> None:
    assert loads_json_body(b'{"query": "caf\xc3\xa9"}') == {"query": "café"}
    for bad in (b"{", b'{"k": NaN}', b'{"k": Infinity}', b"\xff\xfe"):
        with pytest.raises(ValueError):  # noqa: PT011 - JSON and UTF-8 errors are ValueErrors
            loads_json_body(bad)


def test_rag_response_carries_context_only_when_asked() -> None:
    chunk = ContextChunk(
        id="a1",
        document_id="art-1",
        collection="embedded_articles",
        author_full_name="Paul Iusztin",
        platform="medium",
        link=None,
        score=0.5,
        content="text",
    )
    base: dict[str, Any] = {
        "answer": "hi",
        "sources": [chunk.model_dump(exclude={"content"})],
        "model": "m",
        "usage": Usage(prompt_tokens=10, completion_tokens=2),
        "trace_id": "t",
        "timings_ms": {"total": 1.0},
    }

    without = RagResponse(**base).to_body()
    with_context = RagResponse(**base, context=[chunk]).to_body()

    assert set(without) == {"answer", "sources", "model", "usage", "trace_id", "timings_ms"}
    assert without["sources"][0] == {
        "id": "a1",
        "document_id": "art-1",
        "collection": "embedded_articles",
        "author_full_name": "Paul Iusztin",
        "platform": "medium",
        "link": None,
        "score": 0.5,
    }
    assert with_context["context"][0]["content"] == "text"


def test_retrieve_response_shape() -> None:
    body = RetrieveResponse(
        expanded_queries=["q"],
        filters=Filters(author=None),
        chunks=[],
        timings_ms={"total": 1.0},
        trace_id="t",
    ).to_body()

    assert body == {
        "expanded_queries": ["q"],
        "filters": {"author": None},
        "chunks": [],
        "timings_ms": {"total": 1.0},
        "trace_id": "t",
    }
