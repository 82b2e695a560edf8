"""Ingest into Qdrant's embedded local mode with the real ONNX code path on a tiny model."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from devkit.tiny_models import tiny_embedder_dir
from feature.chunking import Chunker
from feature.ingest import IngestError, ingest_file, ingest_lines, parse_lines
from rag.adapters.onnx_models import OnnxEmbedder
from rag.adapters.qdrant_local import EmbeddedQdrant
from rag.adapters.vectorstore import QdrantStore
from rag.domain.ports import COLLECTIONS
from tools.ingest import main as ingest_cli

__all__ = ["tiny_embedder_dir"]  # fixture, imported for pytest

ARTICLE = " ".join(
    f"Paul wrote sentence {i} about the feature pipeline and Qdrant." for i in range(40)
)
POST = "\n\n".join(f"Maxime posts about fine tuned llama models, part {i}." for i in range(12))
REPOSITORY = "\n\n".join(f"def step_{i}():\n    return deploy(model={i})" for i in range(30))

DOCUMENTS: list[dict[str, Any]] = [
    {
        "collection": "articles",
        "id": "a1",
        "content": ARTICLE,
        "author_full_name": "Paul Iusztin",
        "platform": "medium",
        "link": "https://medium.com/a1",
    },
    {
        "collection": "posts",
        "content": POST,
        "author_full_name": "Maxime Labonne",
        "platform": "linkedin",
    },
    {
        "collection": "repositories",
        "id": "r1",
        "content": REPOSITORY,
        "author_full_name": "Alex Vesa",
        "platform": "github",
        "link": "https://github.com/x/r1",
        "name": "r1",
    },
]


class RecordingClient(QdrantClient):
    """The real embedded client, recording the payload indexes it was asked for."""

    def __init__(self) -> None:
        super().__init__(location=":memory:")
        self.indexes: list[tuple[str, str, Any]] = []

    def create_payload_index(self, *args: Any, **kwargs: Any) -> Any:
        self.indexes.append((args[0], kwargs["field_name"], kwargs["field_schema"]))
        return super().create_payload_index(*args, **kwargs)


@pytest.fixture
def client() -> Iterator[RecordingClient]:
    client = RecordingClient()
    yield client
    client.close()


@pytest.fixture
def embedder(tiny_embedder_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(tiny_embedder_dir, model_id="tiny")


@pytest.fixture
def chunker(embedder: OnnxEmbedder) -> Chunker:
    # Smaller than the real 256 so short test texts still span several token windows.
    return Chunker(embedder.tokenizer, max_length=128)


def _lines(docs: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(d) + "\n" for d in docs]


def _payloads(client: QdrantClient, collection: str) -> list[dict[str, Any]]:
    """Stored payloads in chunk order."""
    records, _ = client.scroll(collection, limit=10_000, with_payload=True)
    payloads = [dict(r.payload or {}) for r in records]
    return sorted(payloads, key=lambda p: int(p["metadata"]["chunk_index"]))


def _total(client: QdrantClient) -> int:
    return sum(client.count(name).count for name in COLLECTIONS)


def test_bad_lines_are_reported_by_number_and_good_ones_land(
    client: RecordingClient, embedder: OnnxEmbedder, chunker: Chunker
) -> None:
    # Given a file with good documents on lines 1, 3, 7 and broken ones in between
    lines = [
        *_lines(DOCUMENTS[:1]),
        '{"collection": "articles", "content": \n',
        *_lines(DOCUMENTS[1:2]),
        json.dumps({"collection": "posts", "content": "x", "platform": "linkedin"}) + "\n",
        json.dumps({**DOCUMENTS[0], "collection": "videos"}) + "\n",
        "   \n",
        *_lines(DOCUMENTS[2:]),
    ]
    # When ingested
    report = ingest_lines(lines, client=client, embedder=embedder, chunker=chunker)
    # Then each bad line is named with its reason, and the three good documents are searchable
    assert [(e.line, e.reason.split(" ")[0]) for e in report.bad_lines] == [
        (2, "not"),
        (4, "author_full_name:"),
        (5, "collection:"),
    ]
    assert "JSON" in report.bad_lines[0].reason
    assert "'articles', 'posts' or 'repositories'" in report.bad_lines[2].reason
    assert report.documents == 3
    assert _total(client) == report.chunks
    assert {name: c.documents for name, c in report.per_collection.items()} == dict.fromkeys(
        COLLECTIONS, 1
    )


def test_strict_mode_fails_on_a_bad_line_before_writing_anything(
    client: RecordingClient, embedder: OnnxEmbedder, chunker: Chunker
) -> None:
    lines = [*_lines(DOCUMENTS), "not json\n"]
    with pytest.raises(IngestError, match="line 4: not valid JSON"):
        ingest_lines(lines, client=client, embedder=embedder, chunker=chunker, strict=True)
    assert client.get_collections().collections == []


def test_re_ingesting_the_same_file_does_not_duplicate(
    client: RecordingClient, embedder: OnnxEmbedder, chunker: Chunker, tmp_path: Path
) -> None:
    # Given a JSONL file, with one document lacking an id
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(_lines(DOCUMENTS)))
    # When ingested twice
    first = ingest_file(path, client=client, embedder=embedder, chunker=chunker, batch_size=4)
    count_after_first = _total(client)
    ingest_file(path, client=client, embedder=embedder, chunker=chunker, batch_size=7)
    # Then the second run overwrote the same points
    assert count_after_first == first.chunks > len(DOCUMENTS)
    assert _total(client) == count_after_first


def test_each_collection_is_chunked_by_its_rule_with_the_handbook_payload(
    client: RecordingClient, embedder: OnnxEmbedder, chunker: Chunker
) -> None:
    # When the three kinds are ingested
    report = ingest_lines(_lines(DOCUMENTS), client=client, embedder=embedder, chunker=chunker)
    # Then each collection holds its document's chunks in order, as its rule cuts them
    for doc, name in zip(DOCUMENTS, COLLECTIONS, strict=True):
        expected = chunker.chunk(doc["collection"], doc["content"])
        assert [p["content"] for p in _payloads(client, name)] == expected
        assert report.per_collection[name].chunks == len(expected)
    articles = _payloads(client, "embedded_articles")
    posts = _payloads(client, "embedded_posts")
    repositories = _payloads(client, "embedded_repositories")
    # articles: whole sentences; posts: small sections; repositories: token windows of code
    assert all(p["content"].endswith(".") for p in articles)
    assert len(posts) > 1
    assert len(repositories) > 1
    # and the payload is the Handbook's (DESIGN 3.2)
    article = articles[0]
    assert article["document_id"] == "a1"
    assert article["author_full_name"] == "Paul Iusztin"
    assert article["platform"] == "medium"
    assert article["link"] == "https://medium.com/a1"
    assert article["author_id"]
    assert article["metadata"]["embedding_model_id"] == "tiny"
    assert article["metadata"]["embedding_size"] == 384
    assert "link" not in posts[0]
    assert "name" not in posts[0]
    assert repositories[0]["name"] == "r1"
    assert repositories[0]["link"] == "https://github.com/x/r1"


def test_collections_are_created_384d_cosine_with_keyword_indexes(
    client: RecordingClient, embedder: OnnxEmbedder, chunker: Chunker
) -> None:
    ingest_lines(_lines(DOCUMENTS[:1]), client=client, embedder=embedder, chunker=chunker)
    for name in COLLECTIONS:
        params = client.get_collection(name).config.params.vectors
        assert isinstance(params, models.VectorParams)
        assert (params.size, params.distance) == (384, models.Distance.COSINE)
    assert Counter(client.indexes) == Counter(
        (name, field, models.PayloadSchemaType.KEYWORD)
        for name in COLLECTIONS
        for field in ("author_full_name", "platform")
    )


def test_a_collection_of_another_dimension_is_refused(
    client: RecordingClient, embedder: OnnxEmbedder, chunker: Chunker
) -> None:
    client.create_collection(
        "embedded_posts",
        vectors_config=models.VectorParams(size=768, distance=models.Distance.COSINE),
    )
    with pytest.raises(ValueError, match="768-d"):
        ingest_lines(_lines(DOCUMENTS), client=client, embedder=embedder, chunker=chunker)


def test_progress_counts_up_to_the_total(
    client: RecordingClient, embedder: OnnxEmbedder, chunker: Chunker
) -> None:
    seen: list[tuple[int, int]] = []
    report = ingest_lines(
        _lines(DOCUMENTS),
        client=client,
        embedder=embedder,
        chunker=chunker,
        batch_size=5,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[0] == (0, report.chunks)
    assert seen[-1] == (report.chunks, report.chunks)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_ingested_chunks_are_found_by_the_store_with_the_author_filter(
    client: RecordingClient, embedder: OnnxEmbedder, chunker: Chunker
) -> None:
    ingest_lines(_lines(DOCUMENTS), client=client, embedder=embedder, chunker=chunker)
    query = embedder.embed(["fine tuned llama models"])
    result = QdrantStore(EmbeddedQdrant(client)).search(query, limit=3, author="Maxime Labonne")
    assert result.chunks
    assert {c.collection for c in result.chunks} == {"embedded_posts"}
    assert np.isclose(result.chunks[0].score, max(c.score for c in result.chunks))


def test_parse_reports_non_objects() -> None:
    parsed = parse_lines(['["a list"]\n', "42\n"])
    assert [str(e) for e in parsed.errors] == [
        "line 1: not a JSON object",
        "line 2: not a JSON object",
    ]


def test_cli_ingests_into_a_local_folder_and_prints_counts(
    tiny_embedder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(_lines(DOCUMENTS)) + "oops\n")
    argv = [str(corpus), "--qdrant-path", str(tmp_path / "q")]
    argv += ["--embedding-model-dir", str(tiny_embedder_dir)]
    assert ingest_cli(argv) == 0
    out, err = capsys.readouterr()
    assert "documents: 3" in out
    assert "bad lines: 1" in out
    assert "line 4: not valid JSON" in err
    # strict mode: the same file fails, naming it
    assert ingest_cli([*argv, "--strict"]) == 1
    assert str(corpus) in capsys.readouterr().err


def test_cli_names_an_unreadable_file(
    tiny_embedder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.jsonl"
    code = ingest_cli([str(missing), "--embedding-model-dir", str(tiny_embedder_dir)])
    assert code == 2
    assert f"cannot read {missing}" in capsys.readouterr().err


# --- re-ingest replaces a document; ids of different authors never collide ---------------------


def _contents(client: QdrantClient, collection: str, **match: str) -> list[str]:
    conditions = [
        models.FieldCondition(key=key, match=models.MatchValue(value=value))
        for key, value in match.items()
    ]
    records, _ = client.scroll(
        collection, scroll_filter=models.Filter(must=conditions), limit=10_000
    )
    return [str((r.payload or {})["content"]) for r in records]


def test_re_ingesting_a_shorter_document_removes_its_old_tail(
    client: RecordingClient, embedder: OnnxEmbedder, chunker: Chunker
) -> None:
    # Given an article ingested in full, then edited by its author down to its first sentence
    ingest_lines(_lines(DOCUMENTS[:1]), client=client, embedder=embedder, chunker=chunker)
    before = _contents(client, "embedded_articles", document_id="a1")
    shorter = {**DOCUMENTS[0], "content": "Paul kept only this sentence."}

    # When the edited version is ingested
    ingest_lines(_lines([shorter]), client=client, embedder=embedder, chunker=chunker)

    # Then the document is exactly its new text: the removed sentences are not searchable
    assert len(before) > 1
    assert _contents(client, "embedded_articles", document_id="a1") == [shorter["content"]]
    assert "sentence 39" not in json.dumps(_payloads(client, "embedded_articles"))


def test_the_same_id_from_another_author_is_another_document(
    client: RecordingClient, embedder: OnnxEmbedder, chunker: Chunker
) -> None:
    # Given two authors whose exports both number their posts from 1 (one as a JSON number)
    first = {
        "collection": "posts",
        "id": 1,
        "content": "Alice on RAG.",
        "author_full_name": "Alice",
        "platform": "x",
    }
    second = {**first, "id": "1", "content": "Bob on agents.", "author_full_name": "Bob"}

    # When both are ingested, in one file and then again in separate runs
    ingest_lines(_lines([first, second]), client=client, embedder=embedder, chunker=chunker)
    ingest_lines(_lines([second]), client=client, embedder=embedder, chunker=chunker)

    # Then each keeps its own chunk: neither overwrote nor deleted the other
    assert sorted(_contents(client, "embedded_posts")) == ["Alice on RAG.", "Bob on agents."]


def test_the_same_document_twice_in_one_file_is_refused_naming_both_lines(
    client: RecordingClient, embedder: OnnxEmbedder, chunker: Chunker
) -> None:
    # Given one author's document id on two lines with different texts
    again = {**DOCUMENTS[0], "content": "another text under the same id"}

    # When ingested
    report = ingest_lines(
        _lines([DOCUMENTS[0], again]), client=client, embedder=embedder, chunker=chunker
    )

    # Then the second line is refused with both line numbers, and the first one landed whole
    [error] = report.bad_lines
    assert error.line == 2
    assert "line 1" in error.reason and "a1" in error.reason
    assert "another text" not in json.dumps(_payloads(client, "embedded_articles"))


class FailingDeleteClient(RecordingClient):
    failing = False

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        if self.failing:
            raise RuntimeError("Qdrant went away")
        return super().delete(*args, **kwargs)


def test_a_failure_while_replacing_a_document_loses_nothing(
    embedder: OnnxEmbedder, chunker: Chunker
) -> None:
    # Given a stored article and a Qdrant that fails after the new chunks were written
    client = FailingDeleteClient()
    ingest_lines(_lines(DOCUMENTS[:1]), client=client, embedder=embedder, chunker=chunker)
    shorter = {**DOCUMENTS[0], "content": "Paul kept only this sentence."}

    # When the edited version is ingested and the clean-up fails
    client.failing = True
    with pytest.raises(RuntimeError):
        ingest_lines(_lines([shorter]), client=client, embedder=embedder, chunker=chunker)

    # Then the new text is searchable and no chunk vanished (the stale tail waits for a retry)
    contents = _contents(client, "embedded_articles", document_id="a1")
    assert shorter["content"] in contents and len(contents) > 1
    client.close()


@pytest.mark.parametrize(
    "link", ["javascript:alert(1)", "file:///etc/passwd", "data:,x", "ftp://h/x"]
)
def test_links_other_than_http_or_https_are_refused(link: str) -> None:
    parsed = parse_lines([json.dumps({**DOCUMENTS[0], "link": link})])
    [error] = parsed.errors
    assert "link" in error.reason and "http" in error.reason
    assert parse_lines([json.dumps({**DOCUMENTS[0], "link": "HTTPS://ok.example/x"})]).documents


def test_cli_refuses_to_send_a_qdrant_key_over_plain_http(
    tiny_embedder_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Qdrant takes its key in the `api-key` header of every request
    (https://qdrant.tech/documentation/cloud/authentication/): over http it crosses in clear."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(_lines(DOCUMENTS)))
    monkeypatch.setenv("QDRANT_API_KEY", "the-key")
    argv = [str(corpus), "--qdrant-url", "http://qdrant.example:6333"]
    assert ingest_cli([*argv, "--embedding-model-dir", str(tiny_embedder_dir)]) == 2
    err = capsys.readouterr().err
    assert "https" in err and "the-key" not in err
