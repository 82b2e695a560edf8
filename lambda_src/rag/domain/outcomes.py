"""What the domain hands back to the HTTP layer: outcomes and streamed events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rag.domain.ports import (
    Chunk,
)
from rag.domain.prompt import (
    Truncation,
    Turn,
)

AuthorSource = Literal["request", "self_query", "none"]


@dataclass(frozen=True)
class Conversation:
    """What a chat client adds to a `/rag` request (the OpenAI-compatible route): the earlier
    turns (placed in the prompt by rag.domain.prompt's history rule), its own stop sequences (added to
    the format's) and its end-user id (traced)."""

    history: tuple[Turn, ...] = ()
    stop: tuple[str, ...] = ()
    user: str | None = None


NO_CONVERSATION = Conversation()


@dataclass(frozen=True)
class RetrievalOutcome:
    query: str
    expanded_queries: list[str]
    """The original query first, then the alternatives actually searched."""
    author: str | None
    author_source: AuthorSource
    chunks: list[Chunk]
    warnings: list[str]
    fallbacks: list[str]
    trace_id: str
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class AnswerOutcome:
    answer: str
    sources: list[Chunk]
    """The chunks placed in the prompt (content as placed), best first."""
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    trace_id: str
    timings_ms: dict[str, float]
    retrieval: RetrievalOutcome
    truncation: Truncation | None
    finish_reason: str | None = None
    """The model's: "length" when max_new_tokens ended the answer (TGI and OpenAI say so)."""


@dataclass(frozen=True)
class RetrievalEvent:
    """Streamed first: what the answer will be based on."""

    retrieval: RetrievalOutcome


@dataclass(frozen=True)
class TokenEvent:
    text: str


@dataclass(frozen=True)
class DoneEvent:
    """Streamed last: the same outcome `answer` returns, with `time_to_first_token`."""

    outcome: AnswerOutcome


StreamEvent = RetrievalEvent | TokenEvent | DoneEvent
