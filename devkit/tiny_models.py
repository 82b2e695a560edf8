"""Tiny, deterministic stand-ins for the real ONNX models, built in a few milliseconds.

They speak exactly the real models' interface (a BERT WordPiece `tokenizer.json`, an ONNX graph
with `input_ids` / `attention_mask` / `token_type_ids` int64 [batch, seq] inputs), so the
production loaders run unchanged on them; only the weights are random. No torch, no Hub.

- `build_embedder(dir)`: `last_hidden_state` [batch, seq, 384] = a per-token embedding row plus a
  token-type row. A token's vector depends on that token only, so padding cannot leak into mean
  pooling and identical texts embed identically whatever the batch.
- `build_cross_encoder(dir)`: `logits` [batch, 1] = dot(mean embedding of segment A, mean embedding
  of segment B). Passages sharing words with the query score higher, like a real reranker would.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from rag.domain.ports import EMBEDDING_DIM

CROSS_ENCODER_DIM = 512
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
ONNX_OPSET = 17
# onnxruntime reads older IR versions; the onnx package writes a newer one by default.
ONNX_IR_VERSION = 8

# fmt: off
DEFAULT_WORDS = (
    "qdrant", "vector", "database", "rust", "search", "embedding", "model", "llm", "twin", "paul",
    "maxime", "alex", "article", "post", "repository", "feature", "pipeline", "inference",
    "sagemaker", "lambda", "fine", "tuned", "llama", "deploy", "the", "a", "an", "is", "of", "to",
    "and", "in", "on", "with", "for", "how", "what", "who", "about", "write", "wrote", "rag",
    "retrieval", "generation",
)
# fmt: on


def build_tokenizer(words: Iterable[str] = ()) -> Tokenizer:
    """A lower-casing BERT WordPiece tokenizer: whole words for `words`, else letter pieces.

    Single letters and their `##` continuations are in the vocabulary, so any ASCII word gets
    real sub-word tokens (token counts grow with text length, as with the real model).
    """
    vocab: dict[str, int] = {}
    pieces = [
        *SPECIAL_TOKENS,
        *string.punctuation,
        *string.digits,
        *string.ascii_lowercase,
        *(f"##{c}" for c in string.ascii_lowercase + string.digits),
        *DEFAULT_WORDS,
        *(w.lower() for w in words),
    ]
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece()
    # Like the real all-MiniLM-L6-v2 file: a fixed truncation/padding the loaders must override.
    tokenizer.enable_truncation(max_length=128)
    tokenizer.enable_padding(pad_id=vocab["[PAD]"], pad_token="[PAD]", length=128)
    return tokenizer


def _int_inputs(names: Iterable[str]) -> list[onnx.ValueInfoProto]:
    return [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in names]


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _embedder_graph(vocab_size: int, seed: int, with_token_type_ids: bool) -> onnx.GraphProto:
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab_size, EMBEDDING_DIM)).astype(np.float32)
    type_table = (0.1 * rng.standard_normal((2, EMBEDDING_DIM))).astype(np.float32)
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_token_type_ids else [])
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["word"])]
    initializers = [numpy_helper.from_array(table, "table")]
    if with_token_type_ids:
        nodes += [
            helper.make_node("Gather", ["type_table", "token_type_ids"], ["typ"]),
            helper.make_node("Add", ["word", "typ"], ["summed"]),
        ]
        initializers.append(numpy_helper.from_array(type_table, "type_table"))
    else:
        nodes.append(helper.make_node("Identity", ["word"], ["summed"]))
    # Zero the padded positions like attention would make them irrelevant; pooling must still mask.
    nodes += [
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last_axis"], ["mask_3d"]),
        helper.make_node("Mul", ["summed", "mask_3d"], ["last_hidden_state"]),
    ]
    initializers.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"))
    output = helper.make_tensor_value_info(
        "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", EMBEDDING_DIM]
    )
    return helper.make_graph(nodes, "tiny_embedder", _int_inputs(inputs), [output], initializers)


def _cross_encoder_graph(vocab_size: int, seed: int) -> onnx.GraphProto:
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab_size, CROSS_ENCODER_DIM)).astype(np.float32)
    # Unit rows in a wide space: a shared word adds ~1 to the score, unrelated words ~0.
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    table[: len(SPECIAL_TOKENS)] = 0.0  # special tokens carry no meaning
    node = helper.make_node
    nodes = [
        node("Gather", ["table", "input_ids"], ["emb"]),
        node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        node("Cast", ["token_type_ids"], ["type_b"], to=TensorProto.FLOAT),
        node("Mul", ["mask", "type_b"], ["mask_b"]),
        node("Sub", ["mask", "mask_b"], ["mask_a"]),
    ]
    for seg in ("a", "b"):
        nodes += [
            node("Unsqueeze", [f"mask_{seg}", "last_axis"], [f"mask3_{seg}"]),
            node("Mul", ["emb", f"mask3_{seg}"], [f"masked_{seg}"]),
            node("ReduceSum", [f"masked_{seg}", "seq_axis"], [f"sum_{seg}"], keepdims=0),
            node("ReduceSum", [f"mask3_{seg}", "seq_axis"], [f"count_{seg}"], keepdims=0),
            node("Max", [f"count_{seg}", "one"], [f"safe_count_{seg}"]),
            node("Div", [f"sum_{seg}", f"safe_count_{seg}"], [f"mean_{seg}"]),
        ]
    nodes += [
        node("Mul", ["mean_a", "mean_b"], ["prod"]),
        node("ReduceSum", ["prod", "last_axis"], ["logits"], keepdims=1),
    ]
    initializers = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "seq_axis"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])
    inputs = _int_inputs(["input_ids", "attention_mask", "token_type_ids"])
    return helper.make_graph(nodes, "tiny_cross_encoder", inputs, [output], initializers)


def build_embedder(
    folder: Path,
    *,
    words: Iterable[str] = (),
    seed: int = 7,
    with_token_type_ids: bool = True,
    onnx_subfolder: bool = False,
) -> Path:
    """Write a tiny embedding model folder (model.onnx or onnx/model.onnx + tokenizer.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(words)
    tokenizer.save(str(folder / "tokenizer.json"))
    model_path = folder / "onnx" / "model.onnx" if onnx_subfolder else folder / "model.onnx"
    _save(_embedder_graph(tokenizer.get_vocab_size(), seed, with_token_type_ids), model_path)
    return folder


def build_cross_encoder(folder: Path, *, words: Iterable[str] = (), seed: int = 11) -> Path:
    """Write a tiny cross-encoder folder (model.onnx + tokenizer.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(words)
    tokenizer.save(str(folder / "tokenizer.json"))
    _save(_cross_encoder_graph(tokenizer.get_vocab_size(), seed), folder / "model.onnx")
    return folder


# Fixtures: import them explicitly into a test module (`from devkit.tiny_models import ...`).
@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_embedder(tmp_path_factory.mktemp("tiny") / "embedding")


@pytest.fixture(scope="session")
def tiny_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cross_encoder(tmp_path_factory.mktemp("tiny") / "reranker")
