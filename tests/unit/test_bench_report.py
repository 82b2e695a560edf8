"""The benchmark's table from hand-made results (tools.bench_report): nothing is measured here.

Rows are GitHub Flavored Markdown table rows, one `| cell |` per column
(https://github.github.com/gfm/#tables-extension-); percentiles are nearest-rank: the value at
rank ceil(q/100 x n) of the sorted sample (https://en.wikipedia.org/wiki/Percentile, "The
nearest-rank method").
"""

from __future__ import annotations

from typing import Any

from tools.bench_report import render

SAMPLE = [10.0, 20.0, 30.0, 40.0, 50.0]
"""Nearest rank for n=5: p50 -> ceil(2.5) = 3rd (30), p95 -> ceil(4.75) = 5th, p99 -> 5th (50)."""


def results(baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    stages = {
        name: [value / 10 for value in SAMPLE]
        for name in ("self_query", "query_expansion", "embed", "search", "rerank", "prompt")
    }
    stages |= {"generate": [], "api": SAMPLE, "total": SAMPLE, "total_without_rerank": SAMPLE}
    return {
        "machine": {"date": "2026-11-30", "cores": "2", "cpu": "test cpu", "python": "3.13.0"},
        "load_start": "0.10",
        "load_end": "0.20",
        "quick": False,
        "models": {"embedding": "emb", "reranker": "rr"},
        "ort_threads": 1,
        "rerank_n": 12,
        "rerank_max_length": 256,
        "max_chunks_per_document": 2,
        "notes": [],
        "setup": {
            "k": 3,
            "expansion_n": 3,
            "token_delay_ms": 50.0,
            "ttft_answer_words": 40,
            "load_delay_ms": 300.0,
            "load_sample_s": 5.0,
        },
        "cold": {
            "total_ms": 812.0,
            "import_ms": 300.0,
            "deps_ms": 512.0,
            "rss_mb": 250.0,
            "runs": 5,
        },
        "warm": {10_000: {"stages": stages, "candidates": [9, 12], "requests": 5}},
        "critical": {
            "delay_ms": 200.0,
            "to_retrieve_ms": 210.0,
            "ratio": 1.05,
            "runs": 4,
            "to_generate_ms": 240.0,
        },
        "ingest": {
            "docs_per_s": 2.5,
            "chunks_per_s": 10.0,
            "documents": 5,
            "chunks": 20,
            "seconds": 2.0,
        },
        "bundles": {"business": 180.5, "forwarder": 40.25},
        "load": {"error": "server did not start"},
        "baseline": baseline,
    }


def test_rows_render_the_measured_numbers() -> None:
    """A hand-made result renders to the rows the README quotes, percentiles nearest-rank."""
    # Given results with no Handbook baseline
    # When they are rendered
    lines = render(results()).splitlines()
    # Then each measure is one row with its numbers and empty Handbook columns
    assert "| measure | ours | Handbook | ratio | notes |" in lines
    assert (
        "| cold init, median (ms) | 812 | - | - | fresh process x5: `import uvicorn, web.main` "
        "300 ms + production wiring (models, Qdrant, SageMaker, SQS clients) 512 ms; budget 1500 |"
    ) in lines
    [total] = [line for line in lines if line.startswith("| warm overhead total, 10000 points")]
    assert total.split(" | ")[1:4] == ["30.0/50.0/50.0", "-", "-"]
    assert (
        "| &nbsp;&nbsp;embed, 10000 points | 3.0/5.0/5.0 | - | - | one batch of 3 queries |"
        in lines
    )
    # a stage that recorded nothing shows a dash, not a crash
    assert any(line.startswith("| &nbsp;&nbsp;generate, 10000 points | - |") for line in lines)
    assert (
        "| business Lambda bundle (MB unzipped) | 180.5 | - | - | budget 200, limit 250 |" in lines
    )
    assert "| load: local server | server did not start | - | - |  |" in lines
    assert not any(line.startswith("Goal") for line in lines)


def test_the_goal_line_compares_the_p50_totals_with_the_baseline() -> None:
    """With a baseline three times slower at p50, the goal line says 3.00x and met (2x goal)."""
    # Given a Handbook total of 90 ms where ours is 30 ms at p50
    baseline = {
        "description": "the Handbook's way",
        "warm": {"10000": {"total": [value * 3 for value in SAMPLE], "embed": SAMPLE}},
    }
    # When rendered
    text = render(results(baseline))
    # Then the totals' ratio and the verdict are in the goal line, and the stage has a ratio
    assert "ours 30 ms, Handbook 90 ms, 3.00x faster: the 2x goal is met" in text
    assert "| &nbsp;&nbsp;embed, 10000 points | 3.0/5.0/5.0 | 30.0/50.0/50.0 | 10.0x |" in text
    assert "Handbook baseline: the Handbook's way" in text


def test_same_cpu_rows_pair_equal_thread_counts_and_the_defaults() -> None:
    """Each side also ran at the other thread counts: rows pair equal counts (the same CPU), then
    each side's default (our ORT_THREADS against torch's all cores); every row has its ratio,
    its ceiling (Handbook total / our rerank, p50) and the 2x verdict."""
    # Given ours at 1 thread (p50 total 30, rerank 3) and 2 threads (24, 2), the Handbook at its
    # default 2 threads (90, rerank 60) and at 1 thread (45, rerank 40)
    baseline = {
        "description": "the Handbook's way",
        "threads": 2,
        "warm": {"10000": {"total": [v * 3 for v in SAMPLE], "rerank": [v * 2 for v in SAMPLE]}},
        "warm_threads": {
            "1": {"total": [v * 1.5 for v in SAMPLE], "rerank": [v * 4 / 3 for v in SAMPLE]}
        },
    }
    data = results(baseline)
    data["warm_threads"] = {
        2: {"stages": {"total": [v * 0.8 for v in SAMPLE], "rerank": [v / 15 for v in SAMPLE]}}
    }
    # When rendered
    lines = render(data).splitlines()
    # Then the same-CPU table has the two matched rows, then the defaults
    start = lines.index(
        "| threads ours / Handbook | ours total | Handbook total | ratio | ours rerank | "
        "Handbook rerank | ceiling | 2x goal |"
    )
    assert lines[start + 2 : start + 5] == [
        "| 1 / 1 | 30 | 45 | 1.50x | 3 | 40 | 15.00x | not met |",
        "| 2 / 2 | 24 | 90 | 3.75x | 2 | 60 | 45.00x | met |",
        "| 1 / 2 (each side's default) | 30 | 90 | 3.00x | 3 | 60 | 30.00x | met |",
    ]


def test_no_same_cpu_table_without_the_baselines_thread_count() -> None:
    """A baseline from before the thread runs (no `threads`) renders without the table."""
    baseline = {"description": "old", "warm": {"10000": {"total": SAMPLE, "rerank": SAMPLE}}}
    assert "threads ours / Handbook" not in render(results(baseline))
