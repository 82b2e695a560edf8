"""The business layer's benchmark: `python -m tools.bench [--quick]` (`make bench`).

Prints one markdown table (also written to build/bench.md) with the machine and the date: cold
init, warm per-request overhead per stage at 1k and 10k points, the LLM helpers' place on the
critical path, ingest throughput, bundle sizes, a load run of the local server, the business
Lambda's cost per request at each memory size (tools.lambda_memory), and, when `.venv-baseline`
exists (`make bench-baseline`), the LLM Engineer's Handbook's way of doing the same stages on the
same number of rerank candidates in the same run. It prints numbers and asserts nothing (DESIGN 5: tests never time).

Models: the embedding model from $RAG_BENCH_EMBEDDING_MODEL_DIR, else build/models/embedding
(`make models`), else a sibling ../shared/models/all-MiniLM-L6-v2-onnx when one exists; the
reranker from $RAG_BENCH_RERANKER_MODEL_DIR, else build/models/reranker, else the embedding graph
as a stand-in of the same family (6 layers where ms-marco-MiniLM-L4-v2 has 4). Without either,
tiny random models stand in and the table says so.

Needs `lambda_src` on the path (`PYTHONPATH=lambda_src:.`, as the Makefile sets it). Everything
heavy is imported inside functions: the cold-init child processes must not pay for this module.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools import lambda_memory
from trace_contract import SpanName

if TYPE_CHECKING:
    from devkit.fakes.memory import ScriptedLLM
    from rag.domain.deps import Deps

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "build" / "bench"
REPORT = REPO / "build" / "bench.md"
CORPUS = REPO / "sample_data" / "corpus.jsonl"
QUERIES = REPO / "sample_data" / "queries.json"
FETCHED_EMBEDDING_DIR = REPO / "build" / "models" / "embedding"
FETCHED_RERANKER_DIR = REPO / "build" / "models" / "reranker"
SHARED_EMBEDDING_DIR = REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2-onnx"
BASELINE_PYTHON = REPO / ".venv-baseline" / "bin" / "python"
BASELINE_SCRIPT = REPO / "tools" / "bench_baseline.py"

POINTS = (1_000, 10_000)
K = 3
"""The API's default k: search limit per query and collection, and chunks kept after rerank."""
EXPANSION_N = 3
COLD_RUNS, COLD_RUNS_QUICK = 5, 3
WARM_REQUESTS, WARM_REQUESTS_QUICK = 200, 40
WARMUP_REQUESTS = 5
BASELINE_REQUESTS, BASELINE_REQUESTS_QUICK = 40, 10
MEMORY_REQUESTS, MEMORY_REQUESTS_QUICK = 15, 4
"""Per memory size and thread count (tools.lambda_memory): 12 quota runs + 2 unthrottled."""
"""The Handbook's requests take ~1 s each here (every candidate reranked): fewer of them."""
THREAD_VARIANTS = (1, 2)
"""Thread counts both sides also run at the largest store, so every row has a same-CPU pair:
one thread is what the business Lambda has (1280 MB = 0.72 vCPU), two are this machine's cores
(torch's default here)."""
HELPER_DELAY_S = 0.2
CRITICAL_REQUESTS, CRITICAL_REQUESTS_QUICK = 10, 4
LOAD_DELAY_S = 0.3
LOAD_CLIENTS = 8
LOAD_SECONDS, LOAD_SECONDS_QUICK = 20.0, 6.0
LOAD_CLIENT_TIMEOUT_S = 30.0
LOAD_SAMPLE_S = 5.0
SERVER_START_TIMEOUT_S = 120.0
CHILD_TIMEOUT_S = 300.0
BASELINE_TIMEOUT_S = 900.0
STAGES = (*SpanName, "api", "total")
"""Pipeline spans from the response's timings_ms; `api` = handler wall time minus the pipeline's
own total (event parsing, response model, JSON serialisation, trace event to the sink)."""

# Production-like env for the cold-init child: an SQS sink, a SageMaker endpoint and a Qdrant URL,
# as the stack sets them. Nothing is called at init, so none of these need to exist.
COLD_ENV = {
    "AWS_LAMBDA_FUNCTION_NAME": "bench-business",  # Powertools' Tracer is on, as in Lambda
    "POWERTOOLS_SERVICE_NAME": "rag",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "QDRANT_URL": "http://127.0.0.1:9",
    "LLM_ENDPOINT": "bench-endpoint",
    "TRACE_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/bench",
}
COLD_CHILD = """
import json, resource, time
t0 = time.perf_counter()
import uvicorn, web.main  # run.sh's uvicorn and the app the Lambda Web Adapter waits for
t1 = time.perf_counter()
from rag import wiring
wiring.get_deps()
t2 = time.perf_counter()
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "deps_ms": (t2 - t1) * 1e3,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def log(line: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- numbers


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- setup


@dataclass
class Models:
    embedding: Path
    reranker: Path
    embedding_label: str
    reranker_label: str
    real: bool
    notes: list[str] = field(default_factory=list)


def resolve_models(work: Path) -> Models:
    embedding_env = os.environ.get("RAG_BENCH_EMBEDDING_MODEL_DIR", "").strip()
    if embedding_env:
        embedding = Path(embedding_env)
    elif (FETCHED_EMBEDDING_DIR / "tokenizer.json").is_file():
        embedding = FETCHED_EMBEDDING_DIR
    else:
        embedding = SHARED_EMBEDDING_DIR
    reranker_env = os.environ.get("RAG_BENCH_RERANKER_MODEL_DIR", "").strip()
    if not reranker_env and (FETCHED_RERANKER_DIR / "tokenizer.json").is_file():
        reranker_env = str(FETCHED_RERANKER_DIR)
    if (embedding / "tokenizer.json").is_file():
        if reranker_env:
            reranker, reranker_label = Path(reranker_env), f"{Path(reranker_env).name}"
        else:
            reranker = embedding
            reranker_label = (
                "stand-in: the all-MiniLM-L6-v2 graph as a cross-encoder (6 layers; the real "
                "ms-marco-MiniLM-L4-v2 has 4, so the rerank column overstates it)"
            )
        return Models(
            embedding, reranker, "all-MiniLM-L6-v2 (ONNX, real weights)", reranker_label, True
        )
    message = (
        f"no embedding model at {embedding}: run `make models`, or set RAG_BENCH_EMBEDDING_MODEL_DIR "
        "to a folder with model.onnx + tokenizer.json. Measuring with TINY RANDOM MODELS instead: the embed and "
        "rerank columns are NOT the real models' cost."
    )
    log(message)
    sys.path.insert(0, str(REPO))
    from devkit.tiny_models import build_cross_encoder, build_embedder

    tiny = work / "tiny-models"
    build_embedder(tiny / "embedding")
    build_cross_encoder(tiny / "reranker")
    return Models(
        tiny / "embedding",
        tiny / "reranker",
        "TINY random model (no real model found)",
        "TINY random cross-encoder",
        False,
        [message],
    )


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "QDRANT_", "LLM_", "TRACE_", "POWERTOOLS_"))
    }
    env["PYTHONPATH"] = f"{REPO / 'lambda_src'}{os.pathsep}{REPO}"
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - http URL of a loopback server we started
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


@contextlib.contextmanager
def tgi_fake(delay_s: float) -> Iterator[str]:
    """The TGI-protocol fake as its own process (its request validation stays off our GIL)."""
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        [
            sys.executable,
            "-m",
            "devkit.fakes.tgi_server",
            "--port",
            str(port),
            "--delay",
            str(delay_s),
        ],
        cwd=REPO,
        env=child_env({}),
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 60, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


# --------------------------------------------------------------------------- data


def load_queries() -> list[dict[str, Any]]:
    return list(json.loads(QUERIES.read_text()))


def alternatives(query: str, n: int) -> list[str]:
    """What the instant LLM answers to query expansion: n distinct rephrasings."""
    forms = ("In other words: {q}", "From another angle, {q}", "Put differently: {q}", "Also: {q}")
    return [forms[i % len(forms)].format(q=query) for i in range(n)]


def ingest_corpus(path: Path, models: Models) -> dict[str, float]:
    """The sample corpus into a fresh embedded Qdrant at `path`; documents/s and chunks/s."""
    from qdrant_client import QdrantClient

    from feature.chunking import Chunker
    from feature.ingest import ingest_file
    from rag.adapters.onnx_models import OnnxEmbedder

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    embedder = OnnxEmbedder(models.embedding, threads=os.cpu_count() or 1)
    chunker = Chunker(embedder.tokenizer, max_length=embedder.max_length)
    client = QdrantClient(path=str(path))
    try:
        start = time.perf_counter()
        report = ingest_file(CORPUS, client=client, embedder=embedder, chunker=chunker)
        elapsed = time.perf_counter() - start
    finally:
        client.close()
    return {
        "documents": report.documents,
        "chunks": report.chunks,
        "seconds": elapsed,
        "docs_per_s": report.documents / elapsed,
        "chunks_per_s": report.chunks / elapsed,
    }


def fill_store(seed: Path, path: Path, points: int) -> int:
    """A copy of the ingested corpus topped up to `points` with filler points: random unit
    vectors and payloads whose contents are real corpus chunks (rerank cost depends on length)."""
    import numpy as np
    from qdrant_client import QdrantClient, models

    from rag.domain.ports import COLLECTIONS

    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(seed, path)
    client = QdrantClient(path=str(path))
    try:
        real = {name: client.count(name, exact=True).count for name in COLLECTIONS}
        contents: list[str] = []
        for name in COLLECTIONS:
            records, _ = client.scroll(name, limit=10_000, with_payload=True)
            contents.extend(str((r.payload or {}).get("content", "")) for r in records)
        missing = max(0, points - sum(real.values()))
        rng = np.random.default_rng(7)
        dim = int(client.get_collection(COLLECTIONS[0]).config.params.vectors.size)  # type: ignore[union-attr]
        batch = 500
        for start in range(0, missing, batch):
            size = min(batch, missing - start)
            vectors = rng.standard_normal((size, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            collection = COLLECTIONS[(start // batch) % len(COLLECTIONS)]
            client.upsert(
                collection,
                points=[
                    models.PointStruct(
                        id=str(uuid.UUID(int=int(rng.integers(1 << 62)) + (start + i))),
                        vector=vectors[i].tolist(),
                        payload={
                            "content": contents[(start + i) % len(contents)],
                            "author_full_name": f"Filler Author {(start + i) % 50}",
                            "platform": "filler",
                        },
                    )
                    for i in range(size)
                ],
            )
        return sum(client.count(name, exact=True).count for name in COLLECTIONS)
    finally:
        client.close()


# --------------------------------------------------------------------------- cold init


def cold_children(models: Models, code: str, runs: int) -> list[dict[str, Any]]:
    """Runs `code` in `runs` fresh processes with the Lambda's environment and these models;
    each prints one JSON object last, which is returned."""
    env = child_env(
        {
            **COLD_ENV,
            "EMBEDDING_MODEL_DIR": str(models.embedding),
            "RERANKER_MODEL_DIR": str(models.reranker),
        }
    )
    samples = []
    for _ in range(runs):
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [sys.executable, "-c", code],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"cold init child failed: {done.stderr[-1500:]}")
        samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return samples


def cold_init(models: Models, runs: int) -> dict[str, float]:
    samples = cold_children(models, COLD_CHILD, runs)
    totals = [s["import_ms"] + s["deps_ms"] for s in samples]
    return {
        "total_ms": statistics.median(totals),
        "import_ms": statistics.median(s["import_ms"] for s in samples),
        "deps_ms": statistics.median(s["deps_ms"] for s in samples),
        "rss_mb": statistics.median(s["rss_mb"] for s in samples),
        "runs": runs,
    }


# --------------------------------------------------------------------------- warm


def instant_llm(author: Callable[[], str | None]) -> ScriptedLLM:
    """`ports.LLM` answering at once, in process (devkit's ScriptedLLM): self-query names the
    author `author()` gives (the current request's), expansion returns distinct rephrasings of
    the query, generation a fixed answer."""
    from devkit.fakes.memory import LLMCall, ScriptedLLM

    def expansion(call: LLMCall) -> str:
        n = int((call.json_schema or {})["properties"]["queries"].get("minItems", 2))
        return json.dumps({"queries": alternatives(_query_of(call.text), n)})

    return ScriptedLLM(
        self_query=lambda call: json.dumps({"author_full_name": author()}),
        query_expansion=expansion,
        generate="An answer from the instant fake.",
        description="instant-llm",
    )


def _query_of(prompt: str) -> str:
    return prompt.rsplit("<query>", 1)[-1].split("</query>", 1)[0].strip()[:200] or "query"


class TimedLLM:
    """Wraps an LLM and records when each generation call (no JSON schema) starts."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.description = inner.description
        self.generate_started: list[float] = []

    def complete(self, prompt: str, params: Any, **kwargs: Any) -> Any:
        if kwargs.get("json_schema") is None:
            self.generate_started.append(time.perf_counter())
        return self.inner.complete(prompt, params, **kwargs)

    def chat(self, messages: Any, params: Any, **kwargs: Any) -> Any:
        if kwargs.get("json_schema") is None:
            self.generate_started.append(time.perf_counter())
        return self.inner.chat(messages, params, **kwargs)

    def stream_complete(self, prompt: str, params: Any, **kwargs: Any) -> Any:
        self.generate_started.append(time.perf_counter())
        return self.inner.stream_complete(prompt, params, **kwargs)

    def stream_chat(self, messages: Any, params: Any, **kwargs: Any) -> Any:
        self.generate_started.append(time.perf_counter())
        return self.inner.stream_chat(messages, params, **kwargs)


class TimedEmbedder:
    """Wraps an embedder and records when each embed call starts: retrieval begins there,
    once the LLM helpers are done."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.started: list[float] = []

    def embed(self, texts: Sequence[str]) -> Any:
        self.started.append(time.perf_counter())
        return self.inner.embed(texts)


def production_deps(
    models: Models,
    qdrant_path: Path,
    llm_url: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Deps:
    from rag.settings import Settings
    from rag.wiring import build_deps

    env = {
        "EMBEDDING_MODEL_DIR": str(models.embedding),
        "RERANKER_MODEL_DIR": str(models.reranker),
        "QDRANT_PATH": str(qdrant_path),
        "EXPANSION_N": str(EXPANSION_N),
        **({"LLM_URL": llm_url} if llm_url else {}),
        **(extra_env or {}),
    }
    return build_deps(Settings.from_env(env))


def handler_for(deps: Deps) -> Any:
    """The Lambda's ASGI app over these deps, called in process (Starlette's TestClient)."""
    from starlette.testclient import TestClient

    from web.app import create_app

    return TestClient(create_app(lambda: deps))


def rag_body(query: str, author: str | None) -> dict[str, Any]:
    return {"query": query, "k": K, **({"author": author} if author else {})}


@dataclass
class WarmResult:
    stages: dict[str, list[float]]
    requests: int
    cpu_ms: list[float]
    """Process CPU time per request (all threads): what a CPU quota is charged with."""


def warm(deps: Deps, requests: int, warmup: int = WARMUP_REQUESTS) -> WarmResult:
    current: dict[str, str | None] = {"author": None}
    client = handler_for(replace(deps, llm=instant_llm(lambda: current["author"])))
    queries = load_queries()
    stages: dict[str, list[float]] = {name: [] for name in (*STAGES, "total_without_rerank")}
    cpu_ms: list[float] = []
    for i in range(warmup + requests):
        item = queries[i % len(queries)]
        # Half the requests name their author, half leave it to self-query.
        author = item.get("author") if i % 2 else None
        current["author"] = item.get("author")
        start, cpu_start = time.perf_counter(), time.process_time()
        result = client.post("/rag", json=rag_body(item["query"], author))
        wall_ms = (time.perf_counter() - start) * 1e3
        request_cpu_ms = (time.process_time() - cpu_start) * 1e3
        if result.status_code != 200:
            raise RuntimeError(f"warm request failed: {result.status_code} {result.text[:300]}")
        if i < warmup:
            continue
        timings = result.json()["timings_ms"]
        for name in SpanName:
            if name in timings:
                stages[name].append(float(timings[name]))
        stages["api"].append(wall_ms - float(timings["total"]))
        stages["total"].append(wall_ms)
        stages["total_without_rerank"].append(wall_ms - float(timings.get(SpanName.RERANK, 0.0)))
        cpu_ms.append(request_cpu_ms)
    return WarmResult(stages, requests, cpu_ms)


def rerank_candidates(deps: Deps) -> list[int]:
    """How many chunks a request's search hands to rerank (3 queries x 3 collections x k)."""
    queries = load_queries()
    counts = []
    for item in queries:
        texts = [item["query"], *alternatives(item["query"], EXPANSION_N - 1)]
        vectors = deps.embedder.embed(texts)
        counts.append(len(deps.store.search(vectors, limit=K, author=item.get("author")).chunks))
    return counts


def memory_runner(models: Models, qdrant_path: Path, requests: int) -> Any:
    """tools.lambda_memory's runner factory: production deps with `threads` onnxruntime threads,
    serving `requests` warm requests per call."""

    @contextlib.contextmanager
    def open_runner(threads: int) -> Iterator[Any]:
        deps = production_deps(models, qdrant_path, extra_env={"ORT_THREADS": str(threads)})
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            warm(deps, 0)  # once per deps: the sizes after the first find the arenas warm
        try:

            def run() -> tuple[list[float], list[float]]:
                with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                    result = warm(deps, requests, warmup=1)
                return result.stages["total"], result.cpu_ms

            yield run
        finally:
            deps.store.close()  # type: ignore[attr-defined]

    return open_runner


# --------------------------------------------------------------------------- critical path


def critical_path(models: Models, qdrant_path: Path, runs: int) -> dict[str, float]:
    """Request start -> generation call start, with every LLM call taking HELPER_DELAY_S."""
    from rag.domain.models import RagRequest
    from rag.domain.pipeline import answer

    with tgi_fake(HELPER_DELAY_S) as url:
        deps = production_deps(models, qdrant_path, llm_url=url)
        timed = TimedLLM(deps.llm)
        embedder = TimedEmbedder(deps.embedder)
        deps = replace(deps, llm=timed, embedder=embedder)
        queries = load_queries()
        to_generate, to_retrieve, helpers = [], [], []
        try:
            for i in range(runs + 1):
                item = queries[i % len(queries)]
                start = time.perf_counter()
                outcome = answer(RagRequest(query=item["query"], k=K), deps)
                if i == 0:
                    continue  # first call opens the connections
                to_generate.append((timed.generate_started[-1] - start) * 1e3)
                to_retrieve.append((embedder.started[-1] - start) * 1e3)
                t = outcome.timings_ms
                helpers.append(
                    max(t.get(SpanName.SELF_QUERY, 0.0), t.get(SpanName.QUERY_EXPANSION, 0.0))
                )
        finally:
            deps.store.close()  # type: ignore[attr-defined]
    delay_ms = HELPER_DELAY_S * 1e3
    median = statistics.median(to_retrieve)
    return {
        "delay_ms": delay_ms,
        "to_generate_ms": statistics.median(to_generate),
        "to_retrieve_ms": median,
        "ratio": median / delay_ms,
        "helpers_ms": statistics.median(helpers),
        "runs": runs,
    }


# --------------------------------------------------------------------------- bundles


TOKEN_DELAY_S = 0.05
"""The paced fake's gap before each streamed token: ~20 tokens/s, an 8B model's order."""
TTFT_ANSWER_WORDS = 40


def time_to_first_token(models: Models, qdrant_path: Path, runs: int) -> dict[str, float]:
    """A streamed /rag over real HTTP (the local server's uvicorn + app, in process) against the
    paced TGI fake (in process too, so both clocks are this perf_counter): request -> first
    `token` event; the model's first token written -> that event read by the client; and the
    buffered answer's time for the same request."""
    import httpx

    from devkit.fakes.tgi_server import TgiServer, fixed
    from tools.local_server import LocalServer, local_app

    answer = " ".join(f"word{i}" for i in range(TTFT_ANSWER_WORDS))
    with TgiServer(fixed(answer), token_delay_s=TOKEN_DELAY_S) as tgi:
        deps = production_deps(models, qdrant_path, llm_url=tgi.url)
        deps = replace(
            deps,
            settings=deps.settings.model_copy(
                update={"self_query_enabled": False, "expansion_n": 1}
            ),
        )
        ttft, gap, buffered, done = [], [], [], []
        try:
            with (
                LocalServer(local_app(deps)) as server,
                httpx.Client(base_url=server.url, timeout=120) as http,
            ):
                queries = load_queries()
                for i in range(runs + 1):
                    body = {"query": queries[i % len(queries)]["query"], "k": K}
                    start = time.perf_counter()
                    first_s = end_s = None
                    with http.stream("POST", "/rag", json={**body, "stream": True}) as response:
                        for line in response.iter_lines():
                            if line == "event: token" and first_s is None:
                                first_s = time.perf_counter()
                            if line == "event: done":
                                end_s = time.perf_counter()
                    start_b = time.perf_counter()
                    http.post("/rag", json=body).raise_for_status()
                    if i == 0 or first_s is None or end_s is None:
                        continue  # the first round opens connections and warms the models
                    ttft.append((first_s - start) * 1e3)
                    gap.append((first_s - tgi.first_token_sent_s[-1]) * 1e3)
                    done.append((end_s - start) * 1e3)
                    buffered.append((time.perf_counter() - start_b) * 1e3)
        finally:
            deps.store.close()  # type: ignore[attr-defined]
    return {
        "runs": runs,
        "ttft_ms": statistics.median(ttft),
        "gap_ms": statistics.median(gap),
        "gap_max_ms": max(gap),
        "done_ms": statistics.median(done),
        "buffered_ms": statistics.median(buffered),
    }


def pypi_reachable() -> bool:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")
    host = index.split("://", 1)[-1].split("/", 1)[0].split(":")[0]
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def bundle_sizes(work: Path) -> dict[str, float] | str:
    if not pypi_reachable():
        return "not measured: PyPI unreachable"
    from stacks.bundling import directory_size
    from stacks.constructs.rag_api import BUSINESS_BUNDLE
    from stacks.constructs.trace_pipeline import FORWARDER_BUNDLE

    sizes = {}
    for name, bundle in (("business", BUSINESS_BUNDLE), ("forwarder", FORWARDER_BUNDLE)):
        target = work / f"bundle-{name}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                bundle.build(target, "x86_64")
        except Exception as exc:  # pip or the network failed midway
            return f"not measured: building the {name} bundle failed ({type(exc).__name__})"
        sizes[name] = directory_size(target) / 1e6
        shutil.rmtree(target, ignore_errors=True)
    return sizes


# --------------------------------------------------------------------------- load


def proc_status(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS"):
            fields[key] = float(value.split()[0])
    return {"threads": fields["Threads"], "rss_mb": fields["VmRSS"] / 1024}


def load_run(models: Models, qdrant_path: Path, seconds: float) -> dict[str, Any]:  # noqa: C901 - counts its client closures; the server's lifetime in one with/try
    """N clients against the local server (loopback) for `seconds`, TGI fake at LOAD_DELAY_S."""
    import http.client

    server_script = REPO / "tools" / "local_server.py"
    if not server_script.is_file():
        return {"error": "not measured: tools/local_server.py is not there yet"}
    queries = load_queries()
    with tgi_fake(LOAD_DELAY_S) as llm_url:
        port = free_port()
        env = child_env(
            {
                "LLM_URL": llm_url,
                "QDRANT_PATH": str(qdrant_path),
                "EMBEDDING_MODEL_DIR": str(models.embedding),
                "RERANKER_MODEL_DIR": str(models.reranker),
                "TRACE_FILE": str(OUT_DIR / "load-traces.jsonl"),
                "EXPANSION_N": str(EXPANSION_N),
            }
        )
        server = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [
                sys.executable,
                "-m",
                "tools.local_server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/health", SERVER_START_TIMEOUT_S, server)
            latencies: list[float] = []
            errors: list[str] = []
            lock = threading.Lock()

            def one(conn: http.client.HTTPConnection, i: int) -> None:
                item = queries[i % len(queries)]
                body = json.dumps({"query": item["query"], "k": K})
                start = time.perf_counter()
                try:
                    conn.request("POST", "/rag", body, {"Content-Type": "application/json"})
                    response = conn.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException) as exc:
                    status, conn.sock = -1, None
                    with lock:
                        errors.append(type(exc).__name__)
                elapsed = (time.perf_counter() - start) * 1e3
                with lock:
                    if status == 200:
                        latencies.append(elapsed)
                    elif status != -1:
                        errors.append(str(status))

            # Warm up: first request loads nothing new but opens pools; then measure.
            warm_conn = http.client.HTTPConnection("127.0.0.1", port, timeout=LOAD_CLIENT_TIMEOUT_S)
            for i in range(2):
                one(warm_conn, i)
            warm_conn.close()
            latencies.clear()
            errors.clear()
            before = proc_status(server.pid)
            deadline = time.monotonic() + seconds

            def client(n: int) -> None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=LOAD_CLIENT_TIMEOUT_S)
                i = n
                while time.monotonic() < deadline:
                    one(conn, i)
                    i += LOAD_CLIENTS
                conn.close()

            # RSS every LOAD_SAMPLE_S: growth shows as a rising second half, not a first-step jump
            samples: list[float] = []
            stop_sampling = threading.Event()

            def sample() -> None:
                while not stop_sampling.wait(LOAD_SAMPLE_S):
                    samples.append(proc_status(server.pid)["rss_mb"])

            sampler = threading.Thread(target=sample, daemon=True)
            started = time.perf_counter()
            threads = [threading.Thread(target=client, args=(n,)) for n in range(LOAD_CLIENTS)]
            sampler.start()
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + LOAD_CLIENT_TIMEOUT_S * 2)
            wall = time.perf_counter() - started
            stop_sampling.set()
            sampler.join(LOAD_SAMPLE_S * 2)
            after = proc_status(server.pid)
        finally:
            server.terminate()
            try:
                server.wait(40)
            except subprocess.TimeoutExpired:
                server.kill()
    return {
        "clients": LOAD_CLIENTS,
        "seconds": wall,
        "requests": len(latencies),
        "rps": len(latencies) / wall,
        "p50": percentile(latencies, 50) if latencies else 0.0,
        "p99": percentile(latencies, 99) if latencies else 0.0,
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "threads": (before["threads"], after["threads"]),
        "rss_mb": (before["rss_mb"], after["rss_mb"]),
        "rss_samples_mb": samples,
    }


# --------------------------------------------------------------------------- baseline


def baseline(task: dict[str, Any]) -> dict[str, Any] | None:
    if not BASELINE_PYTHON.is_file():
        return None
    done = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [str(BASELINE_PYTHON), str(BASELINE_SCRIPT)],
        input=json.dumps(task),
        cwd=REPO,
        env=child_env({}),
        capture_output=True,
        text=True,
        timeout=BASELINE_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"baseline failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def baseline_requests(count: int) -> list[dict[str, Any]]:
    queries = load_queries()
    out = []
    for i in range(count):
        item = queries[i % len(queries)]
        out.append(
            {
                "queries": [item["query"], *alternatives(item["query"], EXPANSION_N - 1)],
                # Ours filters by author whenever the query names one (from the body or from
                # self-query, `warm`), so the Handbook's search filters on the same requests.
                "author": item.get("author"),
            }
        )
    return out


# --------------------------------------------------------------------------- main


def setup() -> dict[str, Any]:
    """The fixed parameters of a run, which the table quotes beside the numbers."""
    return {
        "k": K,
        "expansion_n": EXPANSION_N,
        "token_delay_ms": TOKEN_DELAY_S * 1e3,
        "ttft_answer_words": TTFT_ANSWER_WORDS,
        "load_delay_ms": LOAD_DELAY_S * 1e3,
        "load_sample_s": LOAD_SAMPLE_S,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests and runs (a minute)")
    parser.add_argument("--skip-bundles", action="store_true", help="do not build the bundles")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    # The warm loop calls the handler directly: no X-Ray daemon, no EMF lines on stdout.
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
    for path in (str(REPO / "lambda_src"), str(REPO)):
        if path not in sys.path:
            sys.path.insert(0, path)

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=OUT_DIR))
    results: dict[str, Any] = {"machine": machine(), "load_start": loadavg(), "quick": quick}
    try:
        models = resolve_models(work)
        results["models"] = {"embedding": models.embedding_label, "reranker": models.reranker_label}
        results["notes"] = list(models.notes)

        from rag.settings import Settings

        settings = Settings.from_env({})
        results["ort_threads"] = settings.ort_threads
        # What our pipeline hands the cross-encoder (rag.pipeline._rerank); the Handbook column
        # scores the same count so the rerank ratio compares the same work.
        results["rerank_n"] = max(K, settings.rerank_max_candidates)
        results["rerank_max_length"] = settings.rerank_max_length
        results["max_chunks_per_document"] = settings.max_chunks_per_document

        log("ingest: sample corpus into a fresh embedded Qdrant")
        seed = work / "qdrant-corpus"
        results["ingest"] = ingest_corpus(seed, models)
        stores = {}
        for points in POINTS:
            stores[points] = work / f"qdrant-{points}"
            total = fill_store(seed, stores[points], points)
            log(f"store with {total} points ready")

        log("cold init: fresh processes")
        results["cold"] = cold_init(models, COLD_RUNS_QUICK if quick else COLD_RUNS)

        requests = WARM_REQUESTS_QUICK if quick else WARM_REQUESTS
        results["warm"] = {}
        for points in POINTS:
            log(f"warm: {requests} requests at {points} points")
            deps = production_deps(models, stores[points])
            try:
                # Powertools prints its metrics (EMF lines) on stdout: not for this table.
                with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                    result = warm(deps, requests)
                cand = rerank_candidates(deps)
            finally:
                deps.store.close()  # type: ignore[attr-defined]
            results["warm"][points] = {
                "stages": result.stages,
                "candidates": cand,
                "requests": requests,
            }

        results["warm_threads"] = {}
        for threads in THREAD_VARIANTS:
            if threads == settings.ort_threads:
                continue
            count = max(requests // 2, 10)
            log(f"warm: {count} requests at {POINTS[-1]} points with ORT_THREADS={threads}")
            deps = production_deps(
                models, stores[POINTS[-1]], extra_env={"ORT_THREADS": str(threads)}
            )
            try:
                with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                    result = warm(deps, count)
            finally:
                deps.store.close()  # type: ignore[attr-defined]
            results["warm_threads"][threads] = {"stages": result.stages, "requests": count}

        log(f"lambda memory: warm requests under each size's CPU quota, {POINTS[-1]} points")
        results["memory"] = lambda_memory.measure(
            memory_runner(
                models, stores[POINTS[-1]], MEMORY_REQUESTS_QUICK if quick else MEMORY_REQUESTS
            )
        )

        log("time to first token: paced TGI fake, streamed /rag over HTTP")
        results["ttft"] = time_to_first_token(
            models, stores[POINTS[0]], CRITICAL_REQUESTS_QUICK if quick else CRITICAL_REQUESTS
        )
        log("critical path: TGI fake with a fixed delay")
        results["critical"] = critical_path(
            models, stores[POINTS[0]], CRITICAL_REQUESTS_QUICK if quick else CRITICAL_REQUESTS
        )

        if args.skip_bundles:
            results["bundles"] = "not measured: --skip-bundles"
        else:
            log("bundles: building both Lambdas (pip, manylinux wheels)")
            results["bundles"] = bundle_sizes(work)

        log("load: local server under concurrent clients")
        results["load"] = load_run(
            models, stores[POINTS[0]], LOAD_SECONDS_QUICK if quick else LOAD_SECONDS
        )

        if BASELINE_PYTHON.is_file():
            log("baseline: the Handbook's way, in .venv-baseline")
            with tgi_fake(HELPER_DELAY_S) as url:
                results["baseline"] = baseline(
                    {
                        "embedding_dir": str(models.embedding),
                        "reranker_dir": str(models.reranker),
                        "work": str(work / "baseline"),
                        "stores": {str(p): str(s) for p, s in stores.items()},
                        "k": K,
                        "rerank_candidates": results["rerank_n"],
                        "rerank_max_length": results["rerank_max_length"],
                        "cold_runs": COLD_RUNS_QUICK if quick else COLD_RUNS,
                        "requests": baseline_requests(
                            BASELINE_REQUESTS_QUICK if quick else BASELINE_REQUESTS
                        ),
                        "warmup": WARMUP_REQUESTS,
                        "thread_variants": list(THREAD_VARIANTS),
                        "llm_url": url,
                        "critical_runs": CRITICAL_REQUESTS_QUICK if quick else CRITICAL_REQUESTS,
                        "real_models": models.real,
                    }
                )
        else:
            log("baseline: no .venv-baseline (make bench-baseline), Handbook columns left empty")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_end"] = loadavg()
    results["setup"] = setup()
    # Imported here: the report module reads this one's percentile, and a cold-init child
    # importing tools.bench must not pay for rendering.
    from tools.bench_report import render

    table = render(results)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(table)
    print(table)
    log(f"written to {REPORT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
