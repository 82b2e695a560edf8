"""Local mode's embedded store: Qdrant Edge against qdrant-client's local mode.

`python -m tools.edge_bench [--points 10000 100000]` (`make bench-edge`) fills one collection per
engine with the same points (384-d unit vectors, UUID ids, the Handbook's payload with one of
AUTHORS authors) and prints ingest time and search p50/p95 with the author filter, plus how many
of local mode's exact top k Edge finds (HNSW is approximate). It measures and decides nothing.

Qdrant Edge (`qdrant-edge-py`, https://qdrant.tech/documentation/edge/edge-api/) is Qdrant's
engine in process: one `EdgeShard` per directory, HNSW built by `optimize()`, payload indexes
through `UpdateOperation.create_field_index`. qdrant-client's local mode
(`QdrantClient(path=...)`) scores every point in numpy and ignores payload indexes.
The vectors are random, not embedded text: search cost depends on the count and dimension, not
on what the vectors mean, and embedding 100k chunks would take most of an hour here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DIM = 384
AUTHORS = 20
"""Each author owns 1/20 of the points: the filter keeps 5 % of them."""
K = 3
QUERIES = 200
BATCH = 256
"""Points per upsert call, as `make ingest` sends them (rag.ingest's batch size order)."""
SEED = 18
COLLECTION = "embedded_articles"


def dataset(points: int) -> tuple[np.ndarray, list[str], list[dict[str, Any]]]:
    rng = np.random.default_rng(SEED)
    vectors = rng.standard_normal((points, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | i)) for i in range(points)]
    payloads = [
        {
            "content": f"chunk {i} " + "lorem ipsum " * 40,
            "platform": "medium",
            "document_id": str(uuid.UUID(int=i // 4 + 1)),
            "author_id": str(uuid.UUID(int=i % AUTHORS + 1)),
            "author_full_name": f"Author {i % AUTHORS}",
            "link": f"https://example.com/{i // 4}",
            "metadata": {"chunk": i % 4},
        }
        for i in range(points)
    ]
    return vectors, ids, payloads


def queries(count: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(SEED + 1)
    q = rng.standard_normal((count, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q, [f"Author {i % AUTHORS}" for i in range(count)]


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1e3


def p(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q))


def check_filtered(hits: Sequence[Any], author: str) -> None:
    if not all(h.payload and h.payload["author_full_name"] == author for h in hits):
        raise RuntimeError(f"a hit outside the author filter {author!r}")


def bench_local(path: Path, data: Any, qs: Any) -> dict[str, Any]:
    from qdrant_client import QdrantClient, models

    vectors, ids, payloads = data
    client = QdrantClient(path=str(path))
    client.create_collection(
        COLLECTION,
        vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE),
    )

    def fill() -> None:
        for s in range(0, len(ids), BATCH):
            client.upsert(
                COLLECTION,
                points=[
                    models.PointStruct(id=ids[i], vector=vectors[i].tolist(), payload=payloads[i])
                    for i in range(s, min(s + BATCH, len(ids)))
                ],
                wait=True,
            )

    _, ingest_ms = timed(fill)
    client.close()
    client, open_ms = timed(lambda: QdrantClient(path=str(path)))
    latencies, tops = [], []
    for vector, author in zip(*qs, strict=True):
        flt = models.Filter(
            must=[
                models.FieldCondition(key="author_full_name", match=models.MatchValue(value=author))
            ]
        )
        hits, ms = timed(
            lambda v=vector, f=flt: (
                client.query_points(
                    COLLECTION, query=v.tolist(), query_filter=f, limit=K, with_payload=True
                ).points
            )
        )
        latencies.append(ms)
        tops.append({str(h.id) for h in hits})
        check_filtered(hits, author)
    client.close()
    return {"ingest_ms": ingest_ms, "open_ms": open_ms, "search_ms": latencies, "tops": tops}


def bench_edge(path: Path, data: Any, qs: Any, hnsw: bool = True) -> dict[str, Any]:
    import qdrant_edge as qe

    vectors, ids, payloads = data
    config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine))
    shard = qe.EdgeShard.create(str(path), config)
    shard.update(
        qe.UpdateOperation.create_field_index("author_full_name", qe.PayloadSchemaType.Keyword)
    )

    def fill() -> None:
        for s in range(0, len(ids), BATCH):
            shard.update(
                qe.UpdateOperation.upsert_points(
                    [
                        qe.Point(id=ids[i], vector=vectors[i].tolist(), payload=payloads[i])
                        for i in range(s, min(s + BATCH, len(ids)))
                    ]
                )
            )

    _, upsert_ms = timed(fill)
    # optimize() builds the HNSW index; without it the segments stay plain (exact search in
    # Rust, the payload index still narrowing the filter).
    _, optimize_ms = timed(shard.optimize) if hnsw else (None, 0.0)
    _, flush_ms = timed(shard.flush)
    shard.close()
    shard, open_ms = timed(lambda: qe.EdgeShard.load(str(path)))
    latencies, tops = [], []
    for vector, author in zip(*qs, strict=True):
        flt = qe.Filter(
            must=[qe.FieldCondition(key="author_full_name", match=qe.MatchValue(value=author))]
        )
        request = qe.QueryRequest(
            limit=K, query=qe.Query.Nearest(vector.tolist()), filter=flt, with_payload=True
        )
        hits, ms = timed(lambda r=request: shard.query(r))
        latencies.append(ms)
        tops.append({str(h.id) for h in hits})
        check_filtered(hits, author)
    shard.close()
    return {
        "ingest_ms": upsert_ms + optimize_ms + flush_ms,
        "upsert_ms": upsert_ms,
        "optimize_ms": optimize_ms,
        "open_ms": open_ms,
        "search_ms": latencies,
        "tops": tops,
    }


def agreement(tops: Sequence[set[str]], exact: Sequence[set[str]]) -> float:
    """Mean share of the exact top k found, over the queries."""
    return statistics.mean(len(a & b) / max(1, len(b)) for a, b in zip(tops, exact, strict=True))


def render(results: dict[int, dict[str, dict[str, Any]]]) -> str:
    lines = [
        f"| points (one collection) | engine | ingest (s) | open (ms) | filtered search p50/p95 "
        f"(ms) | top-{K} overlap with exact |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for points, r in results.items():
        exact = r["local"]["tops"] if "local" in r else None
        for name, label in (("local", "qdrant-client local mode"), ("edge", "Qdrant Edge")):
            if name not in r:
                continue
            e = r[name]
            overlap = f"{agreement(e['tops'], exact):.2f}" if exact else "-"
            extra = (
                f" (upsert {e['upsert_ms'] / 1e3:.1f} + HNSW {e['optimize_ms'] / 1e3:.1f})"
                if "optimize_ms" in e
                else ""
            )
            lines.append(
                f"| {points} | {label} | {e['ingest_ms'] / 1e3:.1f}{extra} | {e['open_ms']:.0f} | "
                f"{p(e['search_ms'], 50):.2f}/{p(e['search_ms'], 95):.2f} | {overlap} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.edge_bench", description=__doc__)
    parser.add_argument("--points", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=QUERIES)
    parser.add_argument(
        "--engines", nargs="+", choices=("local", "edge"), default=["local", "edge"]
    )
    parser.add_argument(
        "--no-hnsw", action="store_true", help="Edge: skip optimize() (no HNSW index build)"
    )
    args = parser.parse_args(argv)
    qs = queries(args.queries)
    benches: dict[str, Callable[[Path, Any, Any], dict[str, Any]]] = {
        "local": bench_local,
        "edge": lambda path, data, q: bench_edge(path, data, q, hnsw=not args.no_hnsw),
    }
    results: dict[int, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        for points in args.points:
            data = dataset(points)
            print(f"[edge_bench] {points} points", file=sys.stderr, flush=True)
            results[points] = {
                name: benches[name](Path(tmp) / f"{name}-{points}", data, qs)
                for name in args.engines
            }
            print(render({points: results[points]}), file=sys.stderr, flush=True)
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
