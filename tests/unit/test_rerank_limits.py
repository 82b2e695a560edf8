"""RERANK_MAX_CANDIDATES and RERANK_MAX_LENGTH: the cross-encoder's work per request is bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.fakes.memory import chunk, fake_world
from devkit.tiny_models import build_cross_encoder
from rag.adapters.onnx_models import OnnxCrossEncoder
from rag.domain import pipeline
from rag.domain.models import RetrieveRequest
from rag.domain.ports import COLLECTIONS
from rag.settings import (
    DEFAULT_RERANK_MAX_CANDIDATES,
    DEFAULT_RERANK_MAX_LENGTH,
    Settings,
    SettingsError,
)

MANY_CHUNKS = tuple(
    chunk(
        f"c{i}",
        f"RAG retrieval with Qdrant, note {i} " + "filler " * i,
        collection=COLLECTIONS[i % len(COLLECTIONS)],
    )
    for i in range(12)
)


def test_defaults_bound_the_reranker() -> None:
    settings = Settings.from_env({})

    assert settings.rerank_max_candidates == DEFAULT_RERANK_MAX_CANDIDATES == 6
    assert settings.rerank_max_length == DEFAULT_RERANK_MAX_LENGTH == 256


def test_limits_come_from_the_environment() -> None:
    settings = Settings.from_env({"RERANK_MAX_CANDIDATES": "10", "RERANK_MAX_LENGTH": "128"})

    assert (settings.rerank_max_candidates, settings.rerank_max_length) == (10, 128)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RERANK_MAX_CANDIDATES", "0"),
        ("RERANK_MAX_LENGTH", "8"),
        ("RERANK_MAX_LENGTH", "1024"),
        ("RERANK_MAX_LENGTH", "many"),
    ],
)
def test_bad_limits_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_only_the_best_candidates_by_vector_score_are_reranked() -> None:
    # Given more candidates than RERANK_MAX_CANDIDATES
    world = fake_world(env={"RERANK_MAX_CANDIDATES": "4"}, chunks=MANY_CHUNKS)
    found = world.store.search(world.embedder.embed(["RAG retrieval"]), limit=3).chunks
    assert len(found) > 4

    # When a request asks for fewer chunks than the cap
    outcome = pipeline.retrieve(
        RetrieveRequest(query="RAG retrieval", k=2, expand=False), world.deps
    )

    # Then one rerank call scores the 4 best by vector score, and k come back
    assert world.reranker is not None
    (call,) = world.reranker.calls
    assert call[1] == [c.content for c in found[:4]]
    assert len(outcome.chunks) == 2
    rerank_span = next(s for s in world.sink.events[0]["spans"] if s["name"] == "rerank")
    assert rerank_span["input"]["candidates"] == 4


def test_a_k_above_the_cap_still_reranks_every_returned_chunk() -> None:
    world = fake_world(env={"RERANK_MAX_CANDIDATES": "2"}, chunks=MANY_CHUNKS)

    outcome = pipeline.retrieve(
        RetrieveRequest(query="RAG retrieval", k=5, expand=False), world.deps
    )

    assert world.reranker is not None
    assert len(world.reranker.calls[0][1]) == 5
    assert len(outcome.chunks) == 5


def test_pair_length_truncates_query_and_passage(tmp_path: Path) -> None:
    folder = build_cross_encoder(tmp_path / "reranker", words=["qdrant", "rust"])
    reranker = OnnxCrossEncoder(folder, max_length=16)

    encoding = reranker.tokenizer.encode("qdrant " * 40, "rust " * 40)

    assert len(encoding.ids) == 16
    assert len(reranker.score("qdrant " * 40, ["rust " * 40, "qdrant"])) == 2
