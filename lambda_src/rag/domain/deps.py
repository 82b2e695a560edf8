"""What the domain runs on: the adapters and settings it is given (`Deps`), injected by
`rag.wiring` in the app and by whoever builds one in tests or tools."""

from __future__ import annotations

import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

from rag.domain.ports import (
    LLM,
    Embedder,
    Reranker,
    TraceSink,
    VectorStore,
)
from rag.domain.prompt import (
    TokenCounter,
    Utf8ByteEstimate,
)
from rag.domain.trace import Clock, SystemClock
from rag.settings import ModelProfile, Settings

HELPER_WORKERS = 4
"""Two helpers per request; spare threads absorb calls still running after a helper timeout."""
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def helper_executor() -> ThreadPoolExecutor:
    """The container's helper pool, created on first use and reused by every request."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(HELPER_WORKERS, thread_name_prefix="llm-helper")
        return _executor


@dataclass(frozen=True)
class Deps:
    settings: Settings
    llm: LLM | None
    embedder: Embedder
    reranker: Reranker | None
    store: VectorStore
    sink: TraceSink
    clock: Clock = field(default_factory=SystemClock)
    executor: Executor = field(default_factory=helper_executor)
    counter: TokenCounter = field(default_factory=Utf8ByteEstimate)

    @property
    def profile(self) -> ModelProfile:
        return self.settings.model_profile
