"""Load JSONL documents into Qdrant the way the Handbook's feature pipeline lays them out.

Input (DESIGN 3.3): one JSON document a line. Output (DESIGN 3.2): collections
`embedded_{articles,posts,repositories}`, one unnamed 384-d cosine vector, payload `content`,
`platform`, `document_id`, `author_id`, `author_full_name`, `link` (articles, repositories),
`name` (repositories), `metadata`. A document is identified by (collection, platform, author,
`id`): the same `id` from another author or platform is another document. Point ids are uuid5 of
that identity and the chunk index, so ingesting a file again overwrites instead of duplicating,
and the chunks a document no longer has (it got shorter) are deleted after its new chunks are
written: a failure in between leaves old text searchable a while longer, never loses the new.
Documents without an `id` get a uuid5 of their collection, author and content.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from qdrant_client import QdrantClient, models

from feature.chunking import RULES, Chunker, DocumentKind
from rag.domain.ports import Embedder

NAMESPACE = uuid.UUID("6f1c1c59-2a4e-4d0f-9a57-1f0c2b7f3e2a")
"""Fixed uuid5 namespace of this project's point, document and author ids: never change it."""
DEFAULT_BATCH_SIZE = 32
INDEXED_FIELDS = ("author_full_name", "platform")
KINDS: tuple[DocumentKind, ...] = ("articles", "posts", "repositories")

ProgressCallback = Callable[[int, int], None]
"""Called with (chunks written so far, chunks in total)."""


def collection_name(kind: DocumentKind) -> str:
    return f"embedded_{kind}"


class Document(BaseModel):
    """One input line. Unknown keys are ignored so richer exports load as they are."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, coerce_numbers_to_str=True)

    collection: Literal["articles", "posts", "repositories"]
    content: str = Field(min_length=1)
    author_full_name: str = Field(min_length=1)
    platform: str = Field(min_length=1)
    id: str | None = None
    author_id: str | None = None
    link: str | None = None
    name: str | None = None

    @field_validator("link")
    @classmethod
    def _web_link(cls, value: str | None) -> str | None:
        # The link is shown to API users as a source: no javascript:, data: or file: URLs.
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
                raise ValueError("must be an http:// or https:// URL")
        return value

    def document_id(self) -> str:
        return self.id or str(
            uuid.uuid5(NAMESPACE, f"{self.collection}\n{self.author_full_name}\n{self.content}")
        )

    def resolved_author_id(self) -> str:
        return self.author_id or str(uuid.uuid5(NAMESPACE, f"author\n{self.author_full_name}"))

    def identity(self) -> tuple[str, str, str, str]:
        """(collection, platform, author id, document id): what one document's chunks share."""
        return (self.collection, self.platform, self.resolved_author_id(), self.document_id())

    def describe(self) -> str:
        return (
            f"document id {self.document_id()!r} of {self.author_full_name!r} "
            f"({self.collection}, {self.platform})"
        )


@dataclass(frozen=True)
class LineError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ParsedLines:
    documents: list[tuple[int, Document]] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)


class IngestError(Exception):
    """Strict mode met bad lines; nothing was written."""

    def __init__(self, errors: Sequence[LineError]):
        self.errors = list(errors)
        listed = "; ".join(str(e) for e in self.errors[:10])
        more = f" (and {len(self.errors) - 10} more)" if len(self.errors) > 10 else ""
        super().__init__(f"{len(self.errors)} bad line(s): {listed}{more}")


@dataclass
class CollectionCount:
    documents: int = 0
    chunks: int = 0


@dataclass
class IngestReport:
    documents: int
    chunks: int
    bad_lines: list[LineError]
    per_collection: dict[str, CollectionCount]


def _reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "document"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse_lines(lines: Iterable[str]) -> ParsedLines:
    """Validate every line; blank lines are skipped, bad ones are reported by number (from 1)."""
    parsed = ParsedLines()
    seen: dict[tuple[str, str, str, str], int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            parsed.errors.append(LineError(number, f"not valid JSON ({exc.msg})"))
            continue
        if not isinstance(raw, dict):
            parsed.errors.append(LineError(number, "not a JSON object"))
            continue
        try:
            document = Document.model_validate(raw)
        except ValidationError as exc:
            parsed.errors.append(LineError(number, _reason(exc)))
            continue
        first = seen.setdefault(document.identity(), number)
        if first != number:  # two texts under one id: which one wins would depend on the order
            reason = f"{document.describe()} is already on line {first}; give each its own id"
            parsed.errors.append(LineError(number, reason))
            continue
        parsed.documents.append((number, document))
    return parsed


def ensure_collections(client: QdrantClient, *, dim: int) -> None:
    """Create the three collections if missing (cosine, `dim`) with keyword payload indexes."""
    for kind in KINDS:
        name = collection_name(kind)
        if client.collection_exists(name):
            vectors = client.get_collection(name).config.params.vectors
            size = vectors.size if isinstance(vectors, models.VectorParams) else None
            if size != dim:
                raise ValueError(
                    f"collection {name} holds {size}-d vectors, the embedder makes {dim}-d ones"
                )
        else:
            client.create_collection(
                name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE)
            )
        with warnings.catch_warnings():
            # Idempotent on a server; embedded local mode ignores indexes and warns each time.
            warnings.filterwarnings("ignore", "Payload indexes have no effect", UserWarning)
            for field_name in INDEXED_FIELDS:
                client.create_payload_index(
                    name, field_name=field_name, field_schema=models.PayloadSchemaType.KEYWORD
                )


@dataclass(frozen=True)
class _PendingChunk:
    kind: DocumentKind
    point_id: str
    content: str
    payload: dict[str, Any]


def _chunks_of(
    document: Document, chunker: Chunker, model_metadata: dict[str, Any]
) -> list[_PendingChunk]:
    kind: DocumentKind = document.collection
    document_id = document.document_id()
    base: dict[str, Any] = {
        "platform": document.platform,
        "document_id": document_id,
        "author_id": document.resolved_author_id(),
        "author_full_name": document.author_full_name,
    }
    if kind in ("articles", "repositories") or document.link is not None:
        base["link"] = document.link
    if kind == "repositories":
        base["name"] = document.name
    rule = RULES[kind]
    pending = []
    for index, content in enumerate(chunker.chunk(kind, document.content)):
        point_id = str(uuid.uuid5(NAMESPACE, "\n".join((*document.identity(), str(index)))))
        metadata = {"chunk_index": index, **asdict(rule), **model_metadata}
        payload = {"content": content, **base, "metadata": metadata}
        pending.append(_PendingChunk(kind, point_id, content, payload))
    return pending


def ingest_documents(
    documents: Sequence[Document],
    *,
    client: QdrantClient,
    embedder: Embedder,
    chunker: Chunker,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressCallback | None = None,
) -> dict[str, CollectionCount]:
    """Chunk, embed (`batch_size` chunks a call) and upsert; returns counts per collection."""
    ensure_collections(client, dim=embedder.dim)
    model_metadata = {
        "embedding_model_id": embedder.model_id,
        "embedding_size": embedder.dim,
        "max_input_length": chunker.max_length,
    }
    counts = {collection_name(kind): CollectionCount() for kind in KINDS}
    by_kind: dict[DocumentKind, list[_PendingChunk]] = {kind: [] for kind in KINDS}
    written: dict[DocumentKind, list[tuple[Document, list[models.ExtendedPointId]]]] = {
        kind: [] for kind in KINDS
    }
    for document in documents:
        chunks = _chunks_of(document, chunker, model_metadata)
        by_kind[document.collection].extend(chunks)
        written[document.collection].append((document, [c.point_id for c in chunks]))
        count = counts[collection_name(document.collection)]
        count.documents += 1
        count.chunks += len(chunks)
    total = sum(len(chunks) for chunks in by_kind.values())
    done = 0
    if progress:
        progress(done, total)
    for kind, chunks in by_kind.items():
        # Batches of similar length pad little: attention cost grows with the longest in a batch.
        chunks.sort(key=lambda c: len(c.content))
        for start in range(0, len(chunks), batch_size):
            batch = chunks[start : start + batch_size]
            vectors = embedder.embed([c.content for c in batch])
            points = [
                models.PointStruct(id=c.point_id, vector=v.tolist(), payload=c.payload)
                for c, v in zip(batch, vectors, strict=True)
            ]
            client.upsert(collection_name(kind), points=points, wait=True)
            done += len(batch)
            if progress:
                progress(done, total)
        for document, point_ids in written[kind]:
            _delete_stale(client, document, point_ids)
    return counts


def _delete_stale(
    client: QdrantClient, document: Document, point_ids: list[models.ExtendedPointId]
) -> None:
    """Delete the chunks of `document` that its new version no longer has (a shorter text, or
    points written under an earlier id scheme), after the new ones are in place."""
    _, platform, author_id, document_id = document.identity()
    same_document: list[models.Condition] = [
        models.FieldCondition(key=key, match=models.MatchValue(value=value))
        for key, value in (
            ("document_id", document_id),
            ("author_id", author_id),
            ("platform", platform),
        )
    ]
    stale = models.Filter(
        must=same_document, must_not=[models.HasIdCondition(has_id=list(point_ids))]
    )
    client.delete(
        collection_name(document.collection),
        points_selector=models.FilterSelector(filter=stale),
        wait=True,
    )


def ingest_lines(
    lines: Iterable[str],
    *,
    client: QdrantClient,
    embedder: Embedder,
    chunker: Chunker,
    batch_size: int = DEFAULT_BATCH_SIZE,
    strict: bool = False,
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """Parse, then ingest the good documents; in strict mode any bad line stops before writing."""
    parsed = parse_lines(lines)
    if strict and parsed.errors:
        raise IngestError(parsed.errors)
    per_collection = ingest_documents(
        [document for _, document in parsed.documents],
        client=client,
        embedder=embedder,
        chunker=chunker,
        batch_size=batch_size,
        progress=progress,
    )
    return IngestReport(
        documents=len(parsed.documents),
        chunks=sum(c.chunks for c in per_collection.values()),
        bad_lines=parsed.errors,
        per_collection=per_collection,
    )


def ingest_file(
    path: Path,
    *,
    client: QdrantClient,
    embedder: Embedder,
    chunker: Chunker,
    batch_size: int = DEFAULT_BATCH_SIZE,
    strict: bool = False,
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """`ingest_lines` over a UTF-8 JSONL file (OSError / UnicodeDecodeError when unreadable)."""
    with Path(path).open(encoding="utf-8") as handle:
        lines = handle.readlines()
    return ingest_lines(
        lines,
        client=client,
        embedder=embedder,
        chunker=chunker,
        batch_size=batch_size,
        strict=strict,
        progress=progress,
    )
