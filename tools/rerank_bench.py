"""Cross-encoder choices measured side by side: `python -m tools.rerank_bench [MODEL_DIR]`.

Quantizes the reranker's graph to int8 with onnxruntime's own dynamic quantization, then on real
(query, passage) pairs from the sample corpus (each sample query against its 12 nearest
paragraphs by the embedding model, as retrieval would hand them over) reports:
- agreement of int8 with fp32: Pearson and Spearman correlation of the scores, and the mean
  overlap of the top 3 per query (adopt int8 only where these are high);
- time per query for fp32 and int8, 1 and 2 intra-op threads, and batch sizes (one padded batch
  vs length-sorted batches of 1, 2, 4), interleaved round by round so machine load hits all alike.
Prints numbers and asserts nothing. Model: MODEL_DIR, else the bench's reranker (tools.bench).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tools.bench import QUERIES, REPO, resolve_models

CANDIDATES = 12
TOP = 3
ROUNDS = 2
TIMED_QUERIES = 5
"""The timing uses the first queries only: 16 variants x every query takes too long here."""
MIN_PARAGRAPH_CHARS = 200


def paragraphs() -> list[str]:
    out = []
    for line in (REPO / "sample_data" / "corpus.jsonl").read_text().splitlines():
        for part in json.loads(line)["content"].split("\n\n"):
            if len(part.strip()) >= MIN_PARAGRAPH_CHARS:
                out.append(part.strip())
    return out


def pairs(embedding_dir: Path) -> list[tuple[str, list[str]]]:
    from rag.adapters.onnx_models import OnnxEmbedder

    texts = paragraphs()
    embedder = OnnxEmbedder(embedding_dir)
    vectors = embedder.embed(texts)
    queries = [q["query"] for q in json.loads(QUERIES.read_text())]
    out = []
    for query, qv in zip(queries, embedder.embed(queries), strict=True):
        nearest = np.argsort(-(vectors @ qv))[:CANDIDATES]
        out.append((query, [texts[i] for i in nearest]))
    return out


def quantize(folder: Path, work: Path) -> Path:
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from rag.adapters.onnx_models import find_model_file

    target = work / "int8"
    target.mkdir()
    shutil.copy(folder / "tokenizer.json", target / "tokenizer.json")
    quantize_dynamic(find_model_file(folder), target / "model.onnx", weight_type=QuantType.QInt8)
    return target


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def main(argv: list[str]) -> int:
    from rag.adapters.onnx_models import OnnxCrossEncoder

    models = resolve_models(Path(tempfile.mkdtemp()))
    folder = Path(argv[0]) if argv else models.reranker
    work = Path(tempfile.mkdtemp())
    int8 = quantize(folder, work)
    print(f"reranker: {folder} ({models.reranker_label}); int8: quantize_dynamic QInt8")
    print(
        f"fp32 {(folder / 'model.onnx').stat().st_size / 1e6:.0f} MB, "
        f"int8 {(int8 / 'model.onnx').stat().st_size / 1e6:.0f} MB"
    )
    work_pairs = pairs(models.embedding)
    fp32_model = OnnxCrossEncoder(folder, max_length=256)
    int8_model = OnnxCrossEncoder(int8, max_length=256)
    a = np.array([s for q, ps in work_pairs for s in fp32_model.score(q, ps)])
    b = np.array([s for q, ps in work_pairs for s in int8_model.score(q, ps)])
    overlap = []
    for i in range(len(work_pairs)):
        sa, sb = a[i * CANDIDATES : (i + 1) * CANDIDATES], b[i * CANDIDATES : (i + 1) * CANDIDATES]
        overlap.append(len(set(np.argsort(-sa)[:TOP]) & set(np.argsort(-sb)[:TOP])) / TOP)
    print(
        f"agreement on {len(a)} pairs ({len(work_pairs)} queries x {CANDIDATES}): "
        f"pearson {np.corrcoef(a, b)[0, 1]:.4f}, spearman {spearman(a, b):.4f}, "
        f"top-{TOP} overlap mean {statistics.mean(overlap):.3f} min {min(overlap):.2f}, "
        f"max |diff| {np.abs(a - b).max():.4f} (fp32 score std {a.std():.4f})"
    )
    variants = {}
    for name, path in (("fp32", folder), ("int8", int8)):
        for threads in (1, 2):
            for batch in (CANDIDATES, 1, 2, 4):
                variants[(name, threads, batch)] = OnnxCrossEncoder(
                    path, max_length=256, threads=threads, batch_size=batch
                )
    times: dict[tuple[str, int, int], list[float]] = {k: [] for k in variants}
    for _ in range(ROUNDS):
        for key, model in variants.items():
            for query, passages in work_pairs[:TIMED_QUERIES]:
                t0 = time.perf_counter()
                model.score(query, passages)
                times[key].append((time.perf_counter() - t0) * 1e3)
    base = statistics.median(times[("fp32", 1, CANDIDATES)])
    print(f"\nms per query ({CANDIDATES} pairs), median of {ROUNDS} x {TIMED_QUERIES}:")
    print("| graph | threads | batch | p50 ms | vs fp32/1 thread/one batch |")
    print("| --- | --- | --- | --- | --- |")
    for (name, threads, batch), values in times.items():
        p50 = statistics.median(values)
        label = "one padded batch" if batch == CANDIDATES else f"sorted, {batch}"
        print(f"| {name} | {threads} | {label} | {p50:.0f} | {base / p50:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
