"""In-memory fakes of every port in `rag.domain.ports`, for unit tests and the overhead benchmark.

They behave (deterministic vectors, real cosine search, an author filter, token-overlap
scores, a scriptable LLM) rather than returning canned values, so tests assert real effects.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from rag.adapters.llm.stream import TextStream
from rag.domain.deps import Deps
from rag.domain.ports import COLLECTIONS, Chunk, Generation, GenerationParams, SearchResult
from rag.settings import Settings

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


class HashingEmbedder:
    """Bag-of-words feature hashing (sha1, so stable across processes), L2-normalised."""

    def __init__(self, dim: int = 64, model_id: str = "fake/hashing-embedder"):
        self.dim = dim
        self.model_id = model_id
        self.calls: list[list[str]] = []

    def _vector(self, text: str) -> npt.NDArray[np.float32]:
        vector = np.zeros(self.dim, dtype=np.float32)
        for word in words(text):
            digest = hashlib.sha1(word.encode()).digest()  # noqa: S324 - not for security
            index = int.from_bytes(digest[:4], "big") % self.dim
            vector[index] += 1.0 if digest[4] % 2 == 0 else -1.0
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls.append(list(texts))
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.stack([self._vector(t) for t in texts]).astype(np.float32)


class OverlapReranker:
    """Score = share of the query's distinct words found in the passage."""

    def __init__(self, model_id: str = "fake/overlap-reranker", fail_with: Exception | None = None):
        self.model_id = model_id
        self.fail_with = fail_with
        self.calls: list[tuple[str, list[str]]] = []

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        self.calls.append((query, list(passages)))
        if self.fail_with is not None:
            raise self.fail_with
        query_words = set(words(query))
        return [len(query_words & set(words(p))) / max(len(query_words), 1) for p in passages]


class MemoryVectorStore:
    """Brute-force cosine search over named collections, `limit` per vector and collection,
    deduplicated by id (best score kept), with an exact author_full_name filter.

    A collection in COLLECTIONS that was never created is skipped with a warning, like an empty one.
    """

    def __init__(self, embedder: HashingEmbedder, fail_with: Exception | None = None):
        self.embedder = embedder
        self.fail_with = fail_with
        self.collections: dict[str, list[tuple[Chunk, npt.NDArray[np.float32]]]] = {}
        self.calls: list[dict[str, Any]] = []

    def create(self, name: str) -> None:
        self.collections.setdefault(name, [])

    def add(self, *chunks: Chunk) -> None:
        vectors = self.embedder.embed([c.content for c in chunks])
        self.embedder.calls.pop()  # loading data is not a call under test
        for chunk, vector in zip(chunks, vectors, strict=True):
            self.collections.setdefault(chunk.collection, []).append((chunk, vector))

    def search(
        self,
        vectors: npt.NDArray[np.float32],
        *,
        limit: int,
        author: str | None = None,
        collections: Sequence[str] = COLLECTIONS,
    ) -> SearchResult:
        self.calls.append({"queries": len(vectors), "limit": limit, "author": author})
        if self.fail_with is not None:
            raise self.fail_with
        warnings: list[str] = []
        best: dict[str, Chunk] = {}
        for name in collections:
            points = self.collections.get(name)
            if points is None:
                warnings.append(f"collection {name} does not exist, skipped")
                continue
            if not points:
                warnings.append(f"collection {name} is empty, skipped")
                continue
            eligible = [(c, v) for c, v in points if author is None or c.author_full_name == author]
            for query in vectors:
                scored = sorted(
                    ((float(np.dot(query, v)), c) for c, v in eligible), key=lambda p: -p[0]
                )
                for score, chunk in scored[:limit]:
                    if chunk.id not in best or score > best[chunk.id].score:
                        best[chunk.id] = Chunk(**{**chunk.__dict__, "score": score})
        return SearchResult(
            chunks=sorted(best.values(), key=lambda c: (-c.score, c.id)), warnings=warnings
        )


CallPurpose = Literal["self_query", "query_expansion", "generate"]


@dataclass
class LLMCall:
    kind: Literal["complete", "chat"]
    purpose: CallPurpose
    prompt: str | None
    messages: list[dict[str, str]] | None
    params: GenerationParams
    json_schema: Mapping[str, Any] | None
    timeout_s: float | None

    @property
    def text(self) -> str:
        """The prompt, or the messages' contents joined."""
        if self.prompt is not None:
            return self.prompt
        return "\n".join(m["content"] for m in self.messages or [])


Responder = str | Exception | Callable[[LLMCall], "str | Generation"]


def _purpose(schema: Mapping[str, Any] | None) -> CallPurpose:
    properties = (schema or {}).get("properties", {})
    if "author_full_name" in properties:
        return "self_query"
    if "queries" in properties:
        return "query_expansion"
    return "generate"


def _default_expansion(call: LLMCall) -> str:
    n = int((call.json_schema or {})["properties"]["queries"]["minItems"])
    return json.dumps({"queries": [f"alternative phrasing {i + 1}" for i in range(n)]})


@dataclass
class ScriptedLLM:
    """An LLM whose answers are scripted per purpose (self-query, expansion, generation).

    A responder is a string (the generated text), an exception (raised), or a function of the
    call. `gate` runs at the start of every call (e.g. a barrier or an event to block on).
    """

    self_query: Responder = '{"author_full_name": null}'
    query_expansion: Responder = _default_expansion
    generate: Responder = "a fake answer"
    gate: Callable[[LLMCall], None] | None = None
    description: str = "fake-llm"
    calls: list[LLMCall] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def complete(
        self,
        prompt: str,
        params: GenerationParams,
        *,
        json_schema: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Generation:
        call = LLMCall(
            "complete", _purpose(json_schema), prompt, None, params, json_schema, timeout_s
        )
        return self._answer(call)

    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        params: GenerationParams,
        *,
        json_schema: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Generation:
        call = LLMCall(
            "chat",
            _purpose(json_schema),
            None,
            [dict(m) for m in messages],
            params,
            json_schema,
            timeout_s,
        )
        return self._answer(call)

    def stream_complete(
        self, prompt: str, params: GenerationParams, *, stall_timeout_s: float
    ) -> TextStream:
        call = LLMCall("complete", "generate", prompt, None, params, None, stall_timeout_s)
        return tgi_stream_of(self._answer(call))

    def stream_chat(
        self,
        messages: Sequence[Mapping[str, str]],
        params: GenerationParams,
        *,
        stall_timeout_s: float,
    ) -> TextStream:
        call = LLMCall(
            "chat", "generate", None, [dict(m) for m in messages], params, None, stall_timeout_s
        )
        return tgi_stream_of(self._answer(call))

    def calls_for(self, purpose: CallPurpose) -> list[LLMCall]:
        return [c for c in self.calls if c.purpose == purpose]

    def _answer(self, call: LLMCall) -> Generation:
        with self._lock:
            self.calls.append(call)
        if self.gate is not None:
            self.gate(call)
        responder: Responder = getattr(self, call.purpose)
        if isinstance(responder, Exception):
            raise responder
        result = responder if isinstance(responder, str) else responder(call)
        if isinstance(result, Generation):
            return result
        return Generation(
            text=result,
            prompt_tokens=None,
            completion_tokens=len(words(result)),
            finish_reason="eos_token",
        )


def tgi_stream_of(generation: Generation) -> TextStream:
    """The scripted answer as TGI's /generate_stream events, one per word (with its space)."""
    pieces = re.findall(r"\s*\S+", generation.text) or [""]
    events = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        details = {"finish_reason": "eos_token", "generated_tokens": len(pieces), "input_length": 0}
        events.append(
            {
                "index": i,
                "token": {"id": i, "text": piece, "logprob": -0.5, "special": False},
                "generated_text": generation.text if last else None,
                "details": details if last else None,
            }
        )
    chunks = iter([f"data:{json.dumps(e)}\n\n".encode() for e in events])
    return TextStream("tgi", chunks, lambda: None)


@dataclass
class RecordingSink:
    events: list[dict[str, Any]] = field(default_factory=list)

    def send(self, event: Mapping[str, Any]) -> None:
        self.events.append(json.loads(json.dumps(event)))  # proves it is JSON-serialisable


@dataclass
class FailingSink:
    error: Exception = field(default_factory=lambda: RuntimeError("sink down"))
    attempts: int = 0

    def send(self, event: Mapping[str, Any]) -> None:
        self.attempts += 1
        raise self.error


def chunk(
    id: str,
    content: str,
    *,
    collection: str = "embedded_articles",
    author: str = "Paul Iusztin",
    platform: str = "medium",
) -> Chunk:
    return Chunk(
        id=id,
        collection=collection,
        content=content,
        score=0.0,
        author_full_name=author,
        platform=platform,
        link=f"https://example.com/{id}",
        payload={"document_id": f"doc-{id}"},
    )


SAMPLE_CHUNKS: tuple[Chunk, ...] = (
    chunk("a1", "RAG pipelines retrieve context from a vector database before generation."),
    chunk("a2", "Fine-tuning Llama with LoRA adapters on a single GPU."),
    chunk(
        "p1",
        "Query expansion and self-query improve retrieval in advanced RAG.",
        collection="embedded_posts",
        platform="linkedin",
    ),
    chunk(
        "p2",
        "Vector database benchmarks: Qdrant, search latency and RAG retrieval.",
        collection="embedded_posts",
        author="Maxime Labonne",
        platform="linkedin",
    ),
    chunk(
        "r1",
        "def retrieve(query): embed the query, search Qdrant, rerank the chunks",
        collection="embedded_repositories",
        author="Maxime Labonne",
        platform="github",
    ),
    chunk(
        "r2",
        "Merging models with mergekit: SLERP and TIES for Llama.",
        collection="embedded_repositories",
        author="Maxime Labonne",
        platform="github",
    ),
)


@dataclass
class FakeWorld:
    """Deps wired to fakes, with the fakes at hand for assertions."""

    deps: Deps
    llm: ScriptedLLM | None
    embedder: HashingEmbedder
    reranker: OverlapReranker | None
    store: MemoryVectorStore
    sink: RecordingSink


_DEFAULT = object()


def fake_world(
    *,
    env: Mapping[str, str] | None = None,
    llm: Any = _DEFAULT,
    reranker: Any = _DEFAULT,
    chunks: Sequence[Chunk] = SAMPLE_CHUNKS,
    sink: Any = None,
    executor: Executor | None = None,
) -> FakeWorld:
    """A world with every collection filled from `chunks` (pass () for empty collections)."""
    settings = Settings.from_env(env or {})
    embedder = HashingEmbedder()
    store = MemoryVectorStore(embedder)
    for name in COLLECTIONS:
        store.create(name)
    if chunks:
        store.add(*chunks)
    the_llm = ScriptedLLM() if llm is _DEFAULT else llm
    the_reranker = OverlapReranker() if reranker is _DEFAULT else reranker
    the_sink = sink if sink is not None else RecordingSink()
    extra: dict[str, Any] = {"executor": executor} if executor is not None else {}
    deps = Deps(
        settings=settings,
        llm=the_llm,
        embedder=embedder,
        reranker=the_reranker,
        store=store,
        sink=the_sink,
        **extra,
    )
    return FakeWorld(deps, the_llm, embedder, the_reranker, store, the_sink)
