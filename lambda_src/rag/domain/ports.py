"""The interfaces between the pipeline and the outside world.

Each external service sits behind one of these small protocols; production adapters and the
in-memory fakes used by tests both implement them, so the pipeline never knows which it has.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

COLLECTIONS: tuple[str, ...] = ("embedded_articles", "embedded_posts", "embedded_repositories")
"""Qdrant collections written by the feature pipeline (DESIGN 3.2)."""
EMBEDDING_DIM = 384
"""The collections' vector size: all-MiniLM-L6-v2's output (tools/model_assets.json)."""


@dataclass(frozen=True)
class Chunk:
    """One retrieved chunk with the payload fields the API returns."""

    id: str
    collection: str
    content: str
    score: float
    author_full_name: str | None = None
    platform: str | None = None
    link: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)

    @property
    def document_id(self) -> str | None:
        """The source document's id (DESIGN 3.2 payload): what evaluation labels refer to; a
        document cut into several chunks has one id and several point ids."""
        value = self.payload.get("document_id")
        return None if value is None else str(value)


@dataclass(frozen=True)
class SearchResult:
    chunks: list[Chunk]
    """Deduplicated by point id, best vector score first."""
    warnings: list[str] = field(default_factory=list)
    """Human-readable notes such as 'collection embedded_posts missing, skipped'."""


class Embedder(Protocol):
    model_id: str
    dim: int

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One batch in, float32 [len(texts), dim] out, each row L2-normalised."""
        ...


class Reranker(Protocol):
    model_id: str

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """Relevance of each passage to the query (higher is better), one batch."""
        ...


class VectorStore(Protocol):
    def search(
        self,
        vectors: npt.NDArray[np.float32],
        *,
        limit: int,
        author: str | None = None,
        collections: Sequence[str] = COLLECTIONS,
    ) -> SearchResult:
        """Search every collection for every vector, filtered on author_full_name when given."""
        ...


class TraceSink(Protocol):
    def send(self, event: Mapping[str, Any]) -> None:
        """Hand one trace event (DESIGN 3.4) on; must not raise into the request path."""
        ...


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


class GenerationStream(Protocol):
    """One streamed generation as the domain sees it: iterate for the model's raw text pieces
    (stop sequences are the domain's StopFilter's job), then `result()`; `close()` ends the
    upstream call. The LLM adapters' TextStream implements it."""

    def __iter__(self) -> Iterator[str]: ...

    def result(self) -> Generation: ...

    def close(self) -> None: ...


class LLM(Protocol):
    """A TGI-protocol model: SageMaker /invocations or a TGI / OpenAI-compatible HTTP server.

    Adapters raise `rag.domain.errors.ApiError` subclasses (mapped per DESIGN 3.1), never raw
    botocore / HTTP exceptions.
    """

    description: str
    """Where calls go (endpoint / component name or base URL), for traces."""

    def complete(
        self,
        prompt: str,
        params: GenerationParams,
        *,
        json_schema: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Generation:
        """Raw-prompt generation (TGI `inputs` + `parameters`); `json_schema` -> TGI grammar."""
        ...

    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        params: GenerationParams,
        *,
        json_schema: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Generation:
        """Messages API (chat template applied server-side); `json_schema` -> response_format."""
        ...

    def stream_complete(
        self, prompt: str, params: GenerationParams, *, stall_timeout_s: float
    ) -> GenerationStream:
        """`complete`, streamed: the request is sent (and its status checked) before this
        returns; iterating the stream yields the text as the model produces it."""
        ...

    def stream_chat(
        self,
        messages: Sequence[Mapping[str, str]],
        params: GenerationParams,
        *,
        stall_timeout_s: float,
    ) -> GenerationStream:
        """`chat`, streamed."""
        ...
