"""What Lambda SnapStart saves on a cold start: `python -m tools.snapstart_bench [--runs N]`.

Without SnapStart a cold start runs the whole init (imports, models, clients, the web app). With
it, that init runs once when a version is published, then `before_snapshot` (the models' first
runs); a cold start restores the snapshot and runs only `after_restore` (new network clients).
Each run is a fresh process, as a cold start is, with the production-like environment of
`tools.bench` (nothing is called over the network). The restore of the snapshot itself is
Lambda's and cannot be measured here. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from tools.bench import cold_children, machine, resolve_models

CHILD = """
import json, time
t0 = time.perf_counter()
import uvicorn, web.main  # run.sh's uvicorn and the app the Lambda Web Adapter starts
from rag import wiring
wiring.get_deps()
t1 = time.perf_counter()
wiring.before_snapshot()
t2 = time.perf_counter()
wiring.after_restore()
t3 = time.perf_counter()
deps = wiring.get_deps()
deps.embedder.embed(["warm up"])
deps.reranker.score("warm up", ["warm up"])
t4 = time.perf_counter()
print(json.dumps({"init_ms": (t1 - t0) * 1e3, "before_snapshot_ms": (t2 - t1) * 1e3,
                  "after_restore_ms": (t3 - t2) * 1e3, "warm_models_ms": (t4 - t3) * 1e3}))
"""
FIELDS = {
    "init_ms": "init: imports + models + clients + web app (per cold start without SnapStart)",
    "before_snapshot_ms": "before_snapshot: first run of each model (once per published version)",
    "after_restore_ms": "after_restore: new Qdrant, SageMaker, SQS clients (per restore)",
    "warm_models_ms": "the same model runs once warm (what the first request pays after it)",
}


def measure(runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as work:
        models = resolve_models(Path(work))
        samples = cold_children(models, CHILD, runs)
    print(f"models: {models.embedding_label}; reranker: {models.reranker_label}", file=sys.stderr)
    return {name: statistics.median(s[name] for s in samples) for name in FIELDS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    result = measure(args.runs)
    host = machine()
    print(f"SnapStart, {host['cores']} cores {host['cpu']}, {host['date']}, median of {args.runs}")
    print("| step | ms |\n|---|---|")
    for name, label in FIELDS.items():
        print(f"| {label} | {result[name]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
