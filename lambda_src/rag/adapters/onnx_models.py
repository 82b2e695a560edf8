"""In-process text models on onnxruntime + tokenizers: no torch, no sentence-transformers.

`OnnxEmbedder` reproduces sentence-transformers' all-MiniLM-L6-v2 vectors (mean pooling over the
attention mask, then L2 norm); `OnnxCrossEncoder` reproduces sentence-transformers' CrossEncoder
logits (ms-marco-MiniLM). Both load from a folder holding `model.onnx` (or `onnx/model.onnx`, the
Hub layout) and `tokenizer.json`; nothing happens at import time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

EMBEDDER_MAX_LENGTH = 256
"""all-MiniLM-L6-v2's max_seq_length: its tokenizer.json says 128, sentence-transformers 256."""
CROSS_ENCODER_MAX_LENGTH = 512
CROSS_ENCODER_BATCH = 2
"""Pairs per cross-encoder run: small batches of length-sorted pairs pad least (tools.rerank_bench)."""
DEFAULT_THREADS = 1
_NORM_EPS = 1e-12  # torch.nn.functional.normalize's eps
_MODEL_FILES = ("model.onnx", "onnx/model.onnx")
SOURCE_FILE = "source.json"
_ORT_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


class ModelLoadError(RuntimeError):
    """A model folder is missing a file or holds a graph we cannot drive."""


def find_model_file(folder: Path) -> Path:
    for name in _MODEL_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ModelLoadError(f"no model.onnx or onnx/model.onnx in {folder}")


def _model_id(folder: Path) -> str:
    """`repo@revision` from the source.json tools.fetch_models writes, else the folder's name."""
    source = folder / SOURCE_FILE
    if source.is_file():
        data = json.loads(source.read_text())
        return f"{data['repo']}@{data['revision']}"
    return folder.name


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning threads burn the Lambda's few vCPUs between calls and add nothing to latency here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


class _OnnxTextModel:
    """One tokenizer + one session; tokenizes a batch, pads to its longest, runs once."""

    def __init__(self, folder: Path, *, max_length: int, threads: int, model_id: str | None):
        folder = Path(folder)
        tokenizer_path = folder / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise ModelLoadError(f"no tokenizer.json in {folder}")
        self.model_id = model_id or _model_id(folder)
        self.max_length = max_length
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # Override the file's settings: truncate at the model's length, pad to the batch's longest.
        self.tokenizer.enable_truncation(max_length=max_length)
        padding = self.tokenizer.padding or {}
        self.tokenizer.enable_padding(
            pad_id=padding.get("pad_id", 0),
            pad_type_id=padding.get("pad_type_id", 0),
            pad_token=padding.get("pad_token", "[PAD]"),
        )
        self.session = ort.InferenceSession(
            str(find_model_file(folder)),
            sess_options=_session_options(threads),
            providers=["CPUExecutionProvider"],
        )
        self._inputs = {
            i.name: _ORT_INT_TYPES.get(i.type, np.int64) for i in self.session.get_inputs()
        }
        missing = {"input_ids", "attention_mask"} - self._inputs.keys()
        if missing:
            raise ModelLoadError(f"{folder}: graph lacks inputs {sorted(missing)}")

    def _feed(self, encodings: list[Encoding]) -> dict[str, npt.NDArray[Any]]:
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        return {
            name: np.asarray(columns[name], dtype=dtype)
            for name, dtype in self._inputs.items()
            if name in columns
        }


class OnnxEmbedder(_OnnxTextModel):
    """Sentence embeddings: mean of the token states over the attention mask, L2-normalised."""

    def __init__(
        self,
        folder: Path,
        *,
        max_length: int = EMBEDDER_MAX_LENGTH,
        threads: int = DEFAULT_THREADS,
        model_id: str | None = None,
    ):
        super().__init__(folder, max_length=max_length, threads=threads, model_id=model_id)
        outputs = self.session.get_outputs()
        by_name = {o.name: o for o in outputs}
        output = by_name.get("last_hidden_state", outputs[0])
        self._output_name = output.name
        self.dim = self._dimension(Path(folder), output.shape[-1])

    @staticmethod
    def _dimension(folder: Path, declared: object) -> int:
        if isinstance(declared, int):
            return declared
        config = folder / "config.json"
        if config.is_file():
            return int(json.loads(config.read_text())["hidden_size"])
        raise ModelLoadError(f"{folder}: output dimension is dynamic and there is no config.json")

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))
        feed = self._feed(encodings)
        (states,) = self.session.run([self._output_name], feed)
        states = np.asarray(states, dtype=np.float32)
        if states.ndim == 3:
            mask = feed["attention_mask"].astype(np.float32)[:, :, None]
            pooled = (states * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        else:  # a graph that pools itself
            pooled = states
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), _NORM_EPS)
        embeddings: npt.NDArray[np.float32] = (pooled / norms).astype(np.float32)
        return embeddings


class OnnxCrossEncoder(_OnnxTextModel):
    """Relevance logits for (query, passage) pairs, tokenized as BERT sentence pairs."""

    def __init__(
        self,
        folder: Path,
        *,
        max_length: int = CROSS_ENCODER_MAX_LENGTH,
        threads: int = DEFAULT_THREADS,
        model_id: str | None = None,
        batch_size: int = CROSS_ENCODER_BATCH,
    ):
        super().__init__(folder, max_length=max_length, threads=threads, model_id=model_id)
        self._output_name = self.session.get_outputs()[0].name
        self.batch_size = batch_size

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """One logit per passage, in the passages' order.

        Pairs run shortest first in batches of `batch_size`, each cut to its own longest pair
        (padding is on the right): a short pair is not computed at the length of the longest."""
        if not passages:
            return []
        encodings = self.tokenizer.encode_batch([(query, p) for p in passages])
        feed = self._feed(encodings)
        lengths = feed["attention_mask"].sum(axis=1)
        order = np.argsort(lengths, kind="stable")
        scores = np.empty(len(passages), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = int(lengths[rows].max())
            (logits,) = self.session.run(
                [self._output_name], {name: a[rows, :width] for name, a in feed.items()}
            )
            scores[rows] = np.asarray(logits, dtype=np.float32).reshape(len(rows), -1)[:, 0]
        return [float(x) for x in scores]
