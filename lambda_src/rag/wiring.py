"""Builds the production `Deps` from the environment, once per container (lazily, cached).

The adapters are imported inside the functions: tests of the pipeline and the API never load
onnxruntime, a Qdrant client or boto3. This module imports nothing heavy itself (the pipeline's
modules come in with the first `build_deps`), so `start_models` can run before the web framework
is imported.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rag.domain.deps import Deps
    from rag.domain.ports import LLM, Embedder, Reranker, TraceSink, VectorStore
    from rag.settings import Settings

_deps: Deps | None = None
_models: tuple[Settings, Future[tuple[Embedder, Reranker | None]]] | None = None
_lock = threading.Lock()


def start_models() -> None:
    """Start loading the models on a side thread now; the next `get_deps` joins it.

    Called first thing at the Lambda's init (web/main.py), before FastAPI, the app and the
    clients are imported: fetching the model archive and building ONNX sessions wait on I/O or
    run in C++ outside the GIL, so they overlap those pure-Python imports instead of following
    them. A failure surfaces in `get_deps`, which then retries from scratch."""
    global _models
    from rag.settings import Settings

    with _lock:
        if _deps is None and _models is None:
            try:
                settings = Settings.from_env(os.environ)
            except ValueError:
                return  # get_deps reads the settings again, and reports what is wrong
            _models = (settings, _submit_models(settings))


def get_deps() -> Deps:
    """The container's Deps, built on the first request (settings, models, clients)."""
    global _deps, _models
    with _lock:
        if _deps is None:
            started, _models = _models, None  # one attempt each: a retry starts afresh
            if started is None:
                from rag.settings import Settings

                _deps = build_deps(Settings.from_env(os.environ))
            else:
                _deps = build_deps(started[0], models=started[1])
        return _deps


def before_snapshot() -> None:
    """SnapStart, before the snapshot: everything built (settings, secrets, models, clients),
    then each model run once, so ONNX Runtime's first-run allocations are in the snapshot too
    instead of in the first request after every restore."""
    deps = get_deps()
    deps.embedder.embed([_WARM_TEXT])
    if deps.reranker is not None:
        deps.reranker.score(_WARM_TEXT, [_WARM_TEXT])


def after_restore() -> None:
    """SnapStart, after a restore and before traffic: new network clients (Qdrant, the LLM's
    SageMaker or HTTP client, the trace sink). The snapshot's clients hold connections that died
    with the environment they were opened in, and the sink's sampling generator was seeded once
    for every environment restored from the snapshot (AWS, "Handling uniqueness with Lambda
    SnapStart"). Models and settings stay: that is what the snapshot is for."""
    global _deps
    with _lock:
        if _deps is None:
            return  # nothing built before the snapshot: the first request builds it all
        store, llm, sink = _build_clients(_deps.settings)
        _deps = dataclasses.replace(_deps, store=store, llm=llm, sink=sink)


_WARM_TEXT = "warm up"


def build_deps(
    settings: Settings, models: Future[tuple[Embedder, Reranker | None]] | None = None
) -> Deps:
    """Models on a side thread (`models`, when `start_models` began them earlier) while this one
    imports and builds the clients: importing boto3 (and qdrant-client in local mode) is pure
    Python, loading the models mostly is not, so the two overlap."""
    from rag.domain.deps import Deps

    pending = models if models is not None else _submit_models(settings)
    store, llm, sink = _build_clients(settings)
    embedder, reranker = pending.result()
    return Deps(
        settings=settings,
        llm=llm,
        embedder=embedder,
        reranker=reranker,
        store=store,
        sink=sink,
    )


def _submit_models(settings: Settings) -> Future[tuple[Embedder, Reranker | None]]:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cold-models")
    try:
        return pool.submit(_load_models, settings)
    finally:
        pool.shutdown(wait=False)  # the worker ends after its one task


def _load_models(settings: Settings) -> tuple[Embedder, Reranker | None]:
    from rag.adapters.model_store import resolve_model_dirs
    from rag.adapters.onnx_models import OnnxCrossEncoder, OnnxEmbedder

    dirs = resolve_model_dirs(
        embedding_dir=_path(settings.embedding_model_dir),
        reranker_dir=_path(settings.reranker_model_dir),
        asset_s3_uri=settings.model_asset_s3_uri,
        need_reranker=settings.rerank_enabled,
    )
    embedder = OnnxEmbedder(dirs.embedding, threads=settings.ort_threads)
    reranker = None
    if settings.rerank_enabled and dirs.reranker is not None:
        reranker = OnnxCrossEncoder(
            dirs.reranker, threads=settings.ort_threads, max_length=settings.rerank_max_length
        )
    return embedder, reranker


def _build_clients(settings: Settings) -> tuple[VectorStore, LLM | None, TraceSink]:
    from rag.adapters.trace_sinks import build_sink
    from rag.adapters.vectorstore import QdrantStore

    store = QdrantStore.from_settings(
        url=settings.qdrant_url,
        path=settings.qdrant_path,
        api_key=settings.qdrant_api_key() if settings.qdrant_url else None,
        timeout_s=settings.qdrant_timeout_s,
    )
    sink = build_sink(settings)
    return store, llm_from_settings(settings), sink


def llm_from_settings(settings: Settings) -> LLM | None:
    """The LLM adapter the settings name: a SageMaker endpoint (its engine from MODEL_PROFILE)
    or an LLM_URL spoken as LLM_API; None when neither is set."""
    from rag.adapters.llm.build import build_llm

    return build_llm(
        url=settings.llm_url,
        api=settings.llm_api,
        endpoint=settings.llm_endpoint,
        inference_component=settings.llm_inference_component,
        connect_timeout_s=settings.llm_connect_timeout_s,
        read_timeout_s=settings.llm_read_timeout_s,
        model=settings.model_profile.model_id,
        engine=settings.model_profile.engine,
    )


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
