"""Builds the production `Deps` from the environment, once per container (lazily, cached).

The adapters are imported inside the functions: tests of the pipeline and the API never load
onnxruntime, qdrant-client or boto3.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from rag.pipeline import Deps
from rag.ports import LLM, Embedder, Reranker, TraceSink, VectorStore
from rag.settings import Settings

_deps: Deps | None = None
_lock = threading.Lock()


def get_deps() -> Deps:
    """The container's Deps, built on the first request (settings, models, clients)."""
    global _deps
    with _lock:
        if _deps is None:
            _deps = build_deps(Settings.from_env(os.environ))
        return _deps


def build_deps(settings: Settings) -> Deps:
    """Models on a side thread while this one imports and builds the clients: fetching the model
    archive (S3, in Lambda) and creating ONNX sessions mostly wait on I/O or run in C++ outside the
    GIL, while importing qdrant-client and boto3 is pure Python, so the two overlap."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cold-models") as pool:
        models = pool.submit(_load_models, settings)
        store, llm, sink = _build_clients(settings)
        embedder, reranker = models.result()
    return Deps(
        settings=settings,
        llm=llm,
        embedder=embedder,
        reranker=reranker,
        store=store,
        sink=sink,
    )


def _load_models(settings: Settings) -> tuple[Embedder, Reranker | None]:
    from rag.model_store import resolve_model_dirs
    from rag.onnx_models import OnnxCrossEncoder, OnnxEmbedder

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
    from rag.sinks import build_sink
    from rag.vectorstore import QdrantStore

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
    from rag.llm import build_llm

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
