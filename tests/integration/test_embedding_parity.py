"""The ONNX embedder reproduces sentence-transformers' all-MiniLM-L6-v2 vectors.

Needs the real model: RAG_TEST_EMBEDDING_MODEL_DIR, else ../shared/models/all-MiniLM-L6-v2-onnx
next to the repository; skipped with the reason when neither exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from rag.adapters.onnx_models import OnnxEmbedder

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2-onnx"
MAX_ABS_DIFF = 1e-5


def _model_dir() -> Path:
    configured = os.environ.get("RAG_TEST_EMBEDDING_MODEL_DIR")
    folder = Path(configured) if configured else DEFAULT_MODEL_DIR
    if not (folder / "parity" / "reference_embeddings.npy").is_file():
        pytest.skip(
            f"real all-MiniLM-L6-v2 ONNX model with parity/ not found at {folder}; "
            "set RAG_TEST_EMBEDDING_MODEL_DIR to a folder holding model.onnx, tokenizer.json "
            "and parity/{sentences.json,reference_embeddings.npy}"
        )
    return folder


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return _model_dir()


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(model_dir, model_id="sentence-transformers/all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def sentences(model_dir: Path) -> list[str]:
    return list(json.loads((model_dir / "parity" / "sentences.json").read_text()))


@pytest.fixture(scope="module")
def batch(embedder: OnnxEmbedder, sentences: list[str]) -> np.ndarray:
    """All sentences (multilingual, emoji, one past 256 tokens) embedded in one batch."""
    return embedder.embed(sentences)


def test_vectors_match_sentence_transformers(
    batch: np.ndarray, model_dir: Path, sentences: list[str]
) -> None:
    # Given the reference vectors made by sentence-transformers (normalize_embeddings=True)
    reference = np.load(model_dir / "parity" / "reference_embeddings.npy")
    # When the same sentences are embedded in one batch
    vectors = batch
    # Then they match
    assert vectors.shape == reference.shape == (len(sentences), 384)
    assert float(np.abs(vectors - reference).max()) < MAX_ABS_DIFF


def test_batch_and_single_embeddings_agree(
    embedder: OnnxEmbedder, sentences: list[str], batch: np.ndarray
) -> None:
    # Given sentences of very different token lengths, When embedded together and one by one
    singles = np.stack([embedder.embed([s])[0] for s in sentences])
    # Then padding changed nothing
    assert float(np.abs(batch - singles).max()) < MAX_ABS_DIFF
