"""The LLM Engineer's Handbook's way of doing the business layer's stages, for `tools.bench`.

Runs in `.venv-baseline` (torch CPU + sentence-transformers, `make bench-baseline`), reads one
JSON task on stdin, prints one JSON result line. Not part of the product; stdlib + that env only.

What it does, as the Handbook's retrieval code does it: self-query, then query expansion (one LLM
call after the other), then for each query `SentenceTransformer.encode` (one call per query) and
a Qdrant search per collection, then `CrossEncoder.predict`. Same work as ours: the cross-encoder
scores the same number of candidates (the best `rerank_candidates` by vector score, the task's
count from our settings) truncated to the same `rerank_max_length` tokens; the Handbook itself
reranks every candidate.

The weights: ../shared/models holds ONNX + tokenizer only, and sentence-transformers' own ONNX
backend would run onnxruntime (our stack, not the Handbook's). So the ONNX initializers are
copied into a BERT state dict (MatMul weights transposed back) and saved as model.safetensors
with the upstream config and tokenizer; the result is checked against the sentence-transformers
reference vectors in parity/ and the max difference reported. The cross-encoder is the same
6-layer BERT loaded as `BertForSequenceClassification` (num_labels=1; its pooler and classifier
head are freshly initialised), matching our stand-in reranker, which is the same graph.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

COLLECTIONS = ("embedded_articles", "embedded_posts", "embedded_repositories")
COLD_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from sentence_transformers import CrossEncoder, SentenceTransformer
from qdrant_client import QdrantClient
embedder = SentenceTransformer(sys.argv[1], device="cpu")
reranker = CrossEncoder(sys.argv[2], device="cpu")
client = QdrantClient(url="http://127.0.0.1:9", check_compatibility=False)
t1 = time.perf_counter()
print(json.dumps({"total_ms": (t1 - t0) * 1e3,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
SELF_QUERY_BODY = {
    "inputs": "Extract the author's full name from the query. Query: {q}",
    "parameters": {"max_new_tokens": 48, "temperature": None, "do_sample": False},
}


def onnx_to_state_dict(onnx_path: Path) -> dict[str, Any]:
    """BERT parameters from a torch.onnx export: named initializers as they are, anonymous MatMul
    weights named after the bias their Add uses (and transposed back to torch's [out, in])."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    state = {name: arr for name, arr in inits.items() if "." in name}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or "." in node.input[1]:
            continue
        for add in consumers.get(node.output[0], []):
            bias = next((i for i in add.input if i.endswith(".bias")), None)
            if add.op_type == "Add" and bias:
                state[bias[: -len(".bias")] + ".weight"] = inits[node.input[1]].T.copy()
    for node in model.graph.node:  # embeddings used through Gather
        if node.op_type == "Gather" and node.input[0] in inits and "." not in node.input[0]:
            arr = inits[node.input[0]]
            if arr.ndim == 2 and arr.shape[0] > 1000:  # the vocabulary table
                state["embeddings.word_embeddings.weight"] = arr
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def prepare_models(onnx_dir: Path, work: Path) -> tuple[Path, Path, float | None]:
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    embedding, reranker = work / "st-embedding", work / "st-cross-encoder"
    config = BertConfig.from_pretrained(str(onnx_dir))
    state = onnx_to_state_dict(onnx_dir / "model.onnx")
    # Mean pooling reads the token states only: the BERT pooler is not part of the embedder.
    state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    bert = BertModel(config, add_pooling_layer=False)
    missing, _ = bert.load_state_dict(state, strict=False)
    missing = [m for m in missing if "position_ids" not in m]
    if missing:
        raise RuntimeError(f"weights not found in the ONNX graph: {missing[:8]}")
    for folder in (embedding, reranker):
        folder.mkdir(parents=True, exist_ok=True)
        for name in (
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt",
            "special_tokens_map.json",
        ):
            if (onnx_dir / name).is_file():
                shutil.copy(onnx_dir / name, folder / name)
    bert.save_pretrained(str(embedding), safe_serialization=True)
    (embedding / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                },
            ]
        )
    )
    (embedding / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 256, "do_lower_case": False})
    )
    (embedding / "1_Pooling").mkdir(exist_ok=True)
    (embedding / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {"word_embedding_dimension": config.hidden_size, "pooling_mode_mean_tokens": True}
        )
    )
    (embedding / "2_Normalize").mkdir(exist_ok=True)

    cls_config = BertConfig.from_pretrained(str(onnx_dir), num_labels=1)
    cls_config.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(0)
    cross = BertForSequenceClassification(cls_config)
    cross.bert.load_state_dict(bert.state_dict(), strict=False)
    cross.save_pretrained(str(reranker), safe_serialization=True)
    del save_file

    parity = onnx_dir / "parity"
    max_diff = None
    if (parity / "reference_embeddings.npy").is_file():
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(embedding), device="cpu")
        sentences = json.loads((parity / "sentences.json").read_text())
        ours = model.encode(sentences, normalize_embeddings=True)
        max_diff = float(np.abs(ours - np.load(parity / "reference_embeddings.npy")).max())
    return embedding, reranker, max_diff


def cold(embedding: Path, reranker: Path, runs: int) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [sys.executable, "-c", COLD_CHILD, str(embedding), str(reranker)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        "total_ms": statistics.median(s["total_ms"] for s in samples),
        "rss_mb": statistics.median(s["rss_mb"] for s in samples),
    }


def llm_call(url: str, prompt: str) -> None:
    body = json.dumps(
        {"inputs": prompt, "parameters": {"max_new_tokens": 48, "details": False}}
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - http URL of a loopback server we started
        f"{url}/generate", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - http URL of a loopback server we started
        response.read()


def retrieve(
    embedder: Any,
    cross: Any,
    client: Any,
    queries: list[str],
    author: str | None,
    k: int,
    rerank_candidates: int,
) -> tuple[dict[str, float], list[str]]:
    from qdrant_client import models

    flt = None
    if author:
        flt = models.Filter(
            must=[
                models.FieldCondition(key="author_full_name", match=models.MatchValue(value=author))
            ]
        )
    t0 = time.perf_counter()
    vectors = [embedder.encode(q) for q in queries]
    t1 = time.perf_counter()
    best: dict[str, tuple[float, str]] = {}
    for vector in vectors:
        for name in COLLECTIONS:
            points = client.query_points(
                name, query=vector.tolist(), query_filter=flt, limit=k, with_payload=True
            ).points
            for p in points:
                if str(p.id) not in best or p.score > best[str(p.id)][0]:
                    best[str(p.id)] = (p.score, str((p.payload or {}).get("content", "")))
    t2 = time.perf_counter()
    found = len(best)
    ranked = sorted(best.values(), key=lambda x: -x[0])
    candidates = [content for _, content in ranked[:rerank_candidates]]
    if candidates:
        scores = cross.predict([(queries[0], c) for c in candidates])
        order = sorted(range(len(candidates)), key=lambda i: -float(scores[i]))
        top = [candidates[i] for i in order[:k]]
    else:
        top = []
    t3 = time.perf_counter()
    timings = {"embed": (t1 - t0) * 1e3, "search": (t2 - t1) * 1e3, "rerank": (t3 - t2) * 1e3}
    timings["candidates"] = float(found)
    timings["scored"] = float(len(candidates))
    return timings, top


def warm(
    embedder: Any, cross: Any, client: Any, task: dict[str, Any], k: int, rerank_candidates: int
) -> dict[str, list[float]]:
    """The task's requests (after its warm-up ones) on one store: per-stage times in ms."""
    stages: dict[str, list[float]] = {"embed": [], "search": [], "rerank": [], "total": []}
    candidates: list[float] = []
    scored: list[float] = []
    requests = task["requests"]
    for i, req in enumerate(requests[: task["warmup"]] + requests):
        start = time.perf_counter()
        timings, _ = retrieve(
            embedder, cross, client, req["queries"], req["author"], k, rerank_candidates
        )
        total = (time.perf_counter() - start) * 1e3
        if i < task["warmup"]:
            continue
        for name in ("embed", "search", "rerank"):
            stages[name].append(timings[name])
        stages["total"].append(total)
        candidates.append(timings["candidates"])
        scored.append(timings["scored"])
    stages["candidates"] = candidates
    stages["scored"] = scored
    return stages


def main() -> int:
    task = json.loads(sys.stdin.read())
    import torch
    from qdrant_client import QdrantClient
    from sentence_transformers import CrossEncoder, SentenceTransformer

    work = Path(task["work"])
    work.mkdir(parents=True, exist_ok=True)
    embedding, reranker, max_diff = prepare_models(Path(task["embedding_dir"]), work)
    result: dict[str, Any] = {"cold": cold(embedding, reranker, task["cold_runs"])}

    embedder = SentenceTransformer(str(embedding), device="cpu")
    cross = CrossEncoder(str(reranker), device="cpu", max_length=int(task["rerank_max_length"]))
    k, rerank_candidates = int(task["k"]), int(task["rerank_candidates"])

    def warm_run(path: str) -> dict[str, list[float]]:
        client = QdrantClient(path=path)
        try:
            return warm(embedder, cross, client, task, k, rerank_candidates)
        finally:
            client.close()

    result["warm"] = {points: warm_run(path) for points, path in task["stores"].items()}
    # The same requests on the largest store with other torch thread counts, so each of our
    # onnxruntime thread counts has a Handbook run on the same CPU beside it.
    default_threads = torch.get_num_threads()
    result["threads"] = default_threads
    largest = max(task["stores"], key=int)
    result["warm_threads"] = {}
    for threads in task.get("thread_variants", []):
        if int(threads) != default_threads:
            torch.set_num_threads(int(threads))
            result["warm_threads"][str(threads)] = warm_run(task["stores"][largest])
    torch.set_num_threads(default_threads)

    # Critical path: self-query, then expansion, then retrieval, then generation would start.
    first_store = next(iter(task["stores"].values()))
    client = QdrantClient(path=first_store)
    to_generate, to_retrieve = [], []
    for i, req in enumerate(task["requests"][: task["critical_runs"] + 1]):
        start = time.perf_counter()
        llm_call(task["llm_url"], f"Extract the author of: {req['queries'][0]}")
        llm_call(task["llm_url"], f"Write 2 other versions of: {req['queries'][0]}")
        retrieval_start = time.perf_counter()
        retrieve(embedder, cross, client, req["queries"], None, k, rerank_candidates)
        if i:
            to_generate.append((time.perf_counter() - start) * 1e3)
            to_retrieve.append((retrieval_start - start) * 1e3)
    client.close()
    result["critical"] = {
        "to_generate_ms": statistics.median(to_generate),
        "to_retrieve_ms": statistics.median(to_retrieve),
    }
    versions = {
        "torch": torch.__version__,
        "sentence_transformers": __import__("sentence_transformers").__version__,
    }
    parity = (
        f"max |diff| {max_diff:.1e} against the sentence-transformers reference vectors"
        if max_diff is not None
        else "no parity vectors to check against"
    )
    result["description"] = (
        f"sentence-transformers {versions['sentence_transformers']} on torch {versions['torch']} "
        f"(CPU, {torch.get_num_threads()} threads), same all-MiniLM-L6-v2 weights copied from "
        f"the ONNX file into safetensors ({parity}); CrossEncoder = the same 6-layer BERT with a "
        "fresh pooler + 1-logit head (the same stand-in as ours); same Qdrant stores, same queries; "
        "stages one after another, one encode call per query, one query_points call per query "
        f"and collection, the best {rerank_candidates} candidates by vector score reranked (the same "
        f"count as ours; the Handbook reranks every candidate) at max_length "
        f"{task['rerank_max_length']}; helpers over HTTP one after the other."
    )
    result["rss_mb_end"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["pid"] = os.getpid()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
