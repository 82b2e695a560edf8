"""The ONNX embedder and cross-encoder, driven through real onnxruntime on tiny built models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devkit.tiny_models import (
    build_embedder,
    tiny_embedder_dir,
    tiny_reranker_dir,
)
from rag.adapters.onnx_models import ModelLoadError, OnnxCrossEncoder, OnnxEmbedder
from rag.domain.ports import EMBEDDING_DIM

__all__ = ["tiny_embedder_dir", "tiny_reranker_dir"]  # fixtures, imported for pytest

TEXTS = [
    "Qdrant is a vector database written in Rust.",
    "a",
    "How do I deploy a fine tuned llama model on SageMaker?",
]


def _words(n: int) -> str:
    return " ".join(["qdrant", "vector", "database", "rust"] * (n // 4))


def test_embeddings_are_unit_rows_of_the_model_dimension(tiny_embedder_dir: Path) -> None:
    # Given the tiny embedder
    embedder = OnnxEmbedder(tiny_embedder_dir)
    # When a batch is embedded
    vectors = embedder.embed(TEXTS)
    # Then one float32 unit vector per text comes back
    assert embedder.dim == EMBEDDING_DIM
    assert vectors.shape == (len(TEXTS), EMBEDDING_DIM)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    assert not np.allclose(vectors[0], vectors[2])


def test_padding_to_the_batch_longest_does_not_change_a_vector(tiny_embedder_dir: Path) -> None:
    # Given texts of very different lengths
    embedder = OnnxEmbedder(tiny_embedder_dir)
    # When embedded together (padded) and one by one (unpadded)
    batch = embedder.embed(TEXTS)
    singles = np.stack([embedder.embed([t])[0] for t in TEXTS])
    # Then the vectors are the same
    np.testing.assert_allclose(batch, singles, atol=1e-6)


def test_texts_are_truncated_at_max_length(tiny_embedder_dir: Path) -> None:
    # Given two texts identical for the first 300 word tokens, different afterwards
    shared = _words(300)
    a, b = f"{shared} paul wrote", f"{shared} alex deploy"
    # When embedded with the default max length (256, above the file's own 128)
    default = OnnxEmbedder(tiny_embedder_dir).embed([a, b])
    # and with a max length that reaches the differing words
    longer = OnnxEmbedder(tiny_embedder_dir, max_length=512).embed([a, b])
    # Then the default cuts both at 256 tokens, and the tokenizer file's 128 did not win
    np.testing.assert_allclose(default[0], default[1], atol=1e-7)
    assert not np.allclose(longer[0], longer[1])
    at_128 = OnnxEmbedder(tiny_embedder_dir, max_length=128).embed([_words(200)])
    assert not np.allclose(OnnxEmbedder(tiny_embedder_dir).embed([_words(200)]), at_128)


def test_graph_without_token_type_ids_in_hub_layout_is_fed_by_declared_inputs(
    tmp_path: Path,
) -> None:
    # Given a model in onnx/model.onnx whose graph declares no token_type_ids
    folder = build_embedder(tmp_path / "m", with_token_type_ids=False, onnx_subfolder=True)
    # When it embeds
    vectors = OnnxEmbedder(folder).embed(TEXTS)
    # Then it works (feeding an undeclared input would make onnxruntime refuse)
    assert vectors.shape == (len(TEXTS), EMBEDDING_DIM)


def test_empty_batch_gives_an_empty_matrix(tiny_embedder_dir: Path) -> None:
    assert OnnxEmbedder(tiny_embedder_dir).embed([]).shape == (0, EMBEDDING_DIM)


def test_a_folder_without_tokenizer_is_refused_with_its_name(tmp_path: Path) -> None:
    folder = build_embedder(tmp_path / "m")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        OnnxEmbedder(folder)


def test_a_folder_without_model_is_refused(tmp_path: Path) -> None:
    folder = build_embedder(tmp_path / "m")
    (folder / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.onnx"):
        OnnxEmbedder(folder)


def test_threads_come_from_the_argument(tiny_embedder_dir: Path) -> None:
    embedder = OnnxEmbedder(tiny_embedder_dir, threads=2)
    assert embedder.session.get_session_options().intra_op_num_threads == 2


def test_cross_encoder_prefers_passages_that_share_the_query_words(
    tiny_reranker_dir: Path,
) -> None:
    # Given the tiny cross-encoder and passages of varying relevance
    reranker = OnnxCrossEncoder(tiny_reranker_dir)
    passages = [
        "paul wrote about llama fine tuning",
        "qdrant is a vector database written in rust",
        "the lambda",
    ]
    # When they are scored against a query in one batch
    scores = reranker.score("qdrant vector database", passages)
    # Then there is one logit per passage and the relevant one ranks first
    assert len(scores) == len(passages)
    assert max(range(len(passages)), key=scores.__getitem__) == 1


def test_cross_encoder_scores_do_not_depend_on_the_batch(tiny_reranker_dir: Path) -> None:
    reranker = OnnxCrossEncoder(tiny_reranker_dir)
    passages = ["qdrant vector database " * 20, "rust", "how to deploy llama on sagemaker"]
    batch = reranker.score("deploy llama", passages)
    singles = [reranker.score("deploy llama", [p])[0] for p in passages]
    np.testing.assert_allclose(batch, singles, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_length_sorted_batches_keep_the_passages_order_and_scores(
    tiny_reranker_dir: Path, batch_size: int
) -> None:
    # Given passages whose lengths are out of order
    passages = ["rust " * 30, "qdrant", "how to deploy llama on sagemaker " * 3, "llama"]
    one_batch = OnnxCrossEncoder(tiny_reranker_dir, batch_size=len(passages))
    sorted_batches = OnnxCrossEncoder(tiny_reranker_dir, batch_size=batch_size)
    widths: list[int] = []
    run = sorted_batches.session.run

    def recording_run(names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        widths.append(feed["input_ids"].shape[1])
        outputs: list[np.ndarray] = run(names, feed)
        return outputs

    sorted_batches.session = _SessionSpy(recording_run)
    # When scored in length-sorted batches
    scores = sorted_batches.score("deploy llama", passages)
    # Then each passage keeps its score and place, and shorter batches ran at their own width
    np.testing.assert_allclose(scores, one_batch.score("deploy llama", passages), atol=1e-5)
    assert len(widths) == -(-len(passages) // batch_size)
    assert widths == sorted(widths) and widths[0] < widths[-1]


class _SessionSpy:
    def __init__(self, run: object) -> None:
        self.run = run


def test_cross_encoder_truncates_pairs_at_512_tokens(tiny_reranker_dir: Path) -> None:
    # Given passages far longer than 512 tokens that differ only after token 600
    reranker = OnnxCrossEncoder(tiny_reranker_dir)
    long_a, long_b = _words(1200), _words(600) + " paul wrote about llama" * 50
    # When scored
    score_a, score_b = reranker.score("qdrant", [long_a, long_b])
    # Then only the first 512 tokens of each pair counted
    assert score_a == pytest.approx(score_b, abs=1e-6)
    assert reranker.score("qdrant", []) == []


def test_model_id_comes_from_the_fetched_source_file(tmp_path: Path) -> None:
    # Given a folder written by tools.fetch_models (source.json), and one without it
    fetched = build_embedder(tmp_path / "embedding")
    (fetched / "source.json").write_text('{"repo": "org/model", "revision": "abc"}')
    plain = build_embedder(tmp_path / "plain-folder")
    # Then the id names the Hub repo and commit, else the folder
    assert OnnxEmbedder(fetched).model_id == "org/model@abc"
    assert OnnxEmbedder(plain).model_id == "plain-folder"
    assert OnnxEmbedder(plain, model_id="given").model_id == "given"
