"""The benchmark's table: `render(results)` turns what tools.bench measured (plain dicts) into
markdown. It measures nothing, so a hand-made result renders the same rows (tests/unit)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tools import lambda_memory
from tools.bench import percentile
from trace_contract import SpanName


def pcts(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return "/".join(f"{percentile(values, q):.1f}" for q in (50, 95, 99))


def ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "-"
    return f"{theirs / ours:.1f}x"


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    setup = results["setup"]
    base = results.get("baseline") or {}
    lines = [
        f"Benchmark of the business layer, {m['date']}: {m['cores']} cores, {m['cpu']}, "
        f"Python {m['python']}; load average {results['load_start']} at start, "
        f"{results['load_end']} at end (other jobs share this machine). "
        f"{'QUICK run (fewer requests). ' if results['quick'] else ''}",
        "",
        f"Embedding: {results['models']['embedding']}. Reranker: {results['models']['reranker']}. "
        f"ORT_THREADS={results['ort_threads']}. Qdrant: embedded local mode, which is brute force "
        "in Python: its search column is not a Qdrant server's.",
        "",
        "| measure | ours | Handbook | ratio | notes |",
        "| --- | --- | --- | --- | --- |",
    ]

    def row(name: str, ours: str, theirs: str = "-", r: str = "-", note: str = "") -> None:
        lines.append(f"| {name} | {ours} | {theirs} | {r} | {note} |")

    c = results["cold"]
    bc = base.get("cold")
    row(
        "cold init, median (ms)",
        f"{c['total_ms']:.0f}",
        f"{bc['total_ms']:.0f}" if bc else "-",
        ratio(c["total_ms"], bc["total_ms"] if bc else None),
        f"fresh process x{c['runs']}: `import uvicorn, web.main` {c['import_ms']:.0f} ms + "
        f"production wiring (models, Qdrant, SageMaker, SQS clients) {c['deps_ms']:.0f} ms; "
        "budget 1500"
        + (
            "; Handbook: import sentence_transformers + SentenceTransformer + CrossEncoder + "
            "QdrantClient"
            if bc
            else ""
        ),
    )
    row(
        "cold init peak RSS (MB)",
        f"{c['rss_mb']:.0f}",
        f"{bc['rss_mb']:.0f}" if bc else "-",
        ratio(c["rss_mb"], bc["rss_mb"] if bc else None),
        "ru_maxrss of the child",
    )
    for points, w in results["warm"].items():
        s = w["stages"]
        cand = w["candidates"]
        bw = (base.get("warm") or {}).get(str(points))
        note = (
            f"{w['requests']} requests through the Lambda handler, in-process instant LLM "
            f"(no HTTP); rerank gets {min(cand)}-{max(cand)} candidates (k={setup['k']}, "
            f"{setup['expansion_n']} queries x 3 collections) and scores the best min(n, "
            f"{results['rerank_n']}) by vector score, at most "
            f"{results['max_chunks_per_document']} per document, truncated to "
            f"{results['rerank_max_length']} tokens"
            + (
                f"; Handbook: the best {results['rerank_n']} by vector score (same count and "
                "truncation; scored per request: "
                f"{min(bw['scored']):.0f}-{max(bw['scored']):.0f})"
                if bw and "scored" in bw
                else ""
            )
        )
        row(
            f"warm overhead total, {points} points, p50/p95/p99 (ms)",
            pcts(s["total"]),
            pcts(bw["total"]) if bw else "-",
            ratio(percentile(s["total"], 50), percentile(bw["total"], 50) if bw else None),
            note
            + "; budget p50 30 / p99 80 at 10k"
            + ("; Handbook total = embed + search + rerank only" if bw else ""),
        )
        row(
            f"&nbsp;&nbsp;total without rerank, {points} points",
            pcts(s["total_without_rerank"]),
            note="what the budget sees with RERANK_ENABLED=false (same requests)",
        )
        for stage in (name for name in s if name not in ("total", "total_without_rerank")):
            theirs = bw.get(stage) if bw else None
            row(
                f"&nbsp;&nbsp;{stage}, {points} points",
                pcts(s[stage]),
                pcts(theirs) if theirs else "-",
                ratio(percentile(s[stage], 50), percentile(theirs, 50) if theirs else None)
                if s[stage]
                else "-",
                (
                    STAGE_NOTES.get(stage, "")
                    + (BASELINE_STAGE_NOTES.get(stage, "") if theirs else "")
                ).format(expansion_n=setup["expansion_n"]),
            )
    cp = results["critical"]
    bcp = base.get("critical")
    delay = cp["delay_ms"]
    row(
        f"critical path: request -> retrieval starts (LLM helpers done), D={delay:.0f} ms per "
        "LLM call (ms)",
        f"{cp['to_retrieve_ms']:.0f} ({cp['ratio']:.2f} D)",
        f"{bcp['to_retrieve_ms']:.0f} ({bcp['to_retrieve_ms'] / delay:.2f} D)" if bcp else "-",
        ratio(cp["to_retrieve_ms"], bcp["to_retrieve_ms"] if bcp else None),
        f"TGI-protocol fake over HTTP, median of {cp['runs']}; self-query and expansion run "
        "concurrently" + ("; Handbook: one after the other" if bcp else ""),
    )
    row(
        "critical path: request -> generation call starts (ms)",
        f"{cp['to_generate_ms']:.0f} ({cp['to_generate_ms'] / delay:.2f} D)",
        f"{bcp['to_generate_ms']:.0f} ({bcp['to_generate_ms'] / delay:.2f} D)" if bcp else "-",
        ratio(cp["to_generate_ms"], bcp["to_generate_ms"] if bcp else None),
        "helpers + embed + search + rerank + prompt",
    )
    tt = results.get("ttft")
    if tt:
        row(
            f"streamed /rag: request -> first token event, paced fake {setup['token_delay_ms']:.0f} "
            "ms/token (ms)",
            f"{tt['ttft_ms']:.0f}",
            note=f"median of {tt['runs']}, real HTTP through uvicorn; the whole stream "
            f"({setup['ttft_answer_words']} tokens) {tt['done_ms']:.0f} ms, the buffered answer to the "
            f"same request {tt['buffered_ms']:.0f} ms",
        )
        row(
            "streamed /rag: model's first token -> client reads its event (ms)",
            f"{tt['gap_ms']:.1f} (max {tt['gap_max_ms']:.1f})",
            note="budget 50 ms; fake and server in one process, one clock",
        )
    ing = results["ingest"]
    row(
        "ingest sample corpus (documents/s, chunks/s)",
        f"{ing['docs_per_s']:.1f} docs/s, {ing['chunks_per_s']:.1f} chunks/s",
        note=f"{ing['documents']} documents, {ing['chunks']} chunks in {ing['seconds']:.1f} s "
        "into a fresh embedded Qdrant, embedding on all cores",
    )
    b = results["bundles"]
    if isinstance(b, dict):
        row(
            "business Lambda bundle (MB unzipped)",
            f"{b['business']:.1f}",
            note="budget 200, limit 250",
        )
        row("forwarder Lambda bundle (MB unzipped)", f"{b['forwarder']:.1f}", note="limit 250")
    else:
        row("Lambda bundles", b)
    ld = results["load"]
    if "error" in ld:
        row("load: local server", ld["error"])
    else:
        row(
            f"load: local server, {ld['clients']} clients x {ld['seconds']:.0f} s, "
            f"TGI fake {setup['load_delay_ms']:.0f} ms/call",
            f"{ld['rps']:.1f} req/s, p50 {ld['p50']:.0f} ms, p99 {ld['p99']:.0f} ms, "
            f"{ld['errors']} errors",
            note=f"{ld['requests']} requests on 127.0.0.1; server threads "
            f"{ld['threads'][0]:.0f} -> {ld['threads'][1]:.0f}, RSS {ld['rss_mb'][0]:.0f} -> "
            f"{ld['rss_mb'][1]:.0f} MB (every {setup['load_sample_s']:.0f} s: "
            f"{', '.join(f'{v:.0f}' for v in ld.get('rss_samples_mb', []))}); the local server "
            "resolves one request at a time, like one Lambda container"
            + (f"; errors: {', '.join(ld['error_kinds'])}" if ld["error_kinds"] else ""),
        )
    largest = max(results["warm"])
    goal = results["warm"][largest]
    goal_base = (base.get("warm") or {}).get(str(largest))
    if goal and goal_base:
        ours = percentile(goal["stages"]["total"], 50)
        theirs = percentile(goal_base["total"], 50)
        floor = percentile(goal["stages"][SpanName.RERANK], 50)
        lines += [
            "",
            f"Goal (DESIGN 5), warm overhead at {largest} points, p50, same candidates: "
            f"ours {ours:.0f} ms, Handbook {theirs:.0f} ms, {theirs / ours:.2f}x faster: the 2x "
            f"goal is {'met' if theirs >= 2 * ours else 'not met'}. Floor: our cross-encoder "
            f"alone takes {floor:.0f} ms p50 on {results['ort_threads']} onnxruntime "
            f"thread(s), so no change outside it can take the ratio past {theirs / floor:.2f}x.",
            *same_cpu(results, largest),
        ]
    memory = results.get("memory")
    if memory:
        from stacks.constructs.rag_api import BUSINESS_MEMORY_MB

        lines += [
            "",
            f"Business Lambda memory size by cost per request (warm overhead at {largest} "
            "points, same requests; CPU share = memory / 1769 MB):",
            "",
            lambda_memory.render(memory, results["cold"]["rss_mb"], BUSINESS_MEMORY_MB),
        ]
    if not base:
        lines.append("")
        lines.append(
            "Handbook columns empty: no .venv-baseline (run `make bench-baseline` once, then "
            "`make bench`)."
        )
    else:
        lines.append("")
        lines.append(f"Handbook baseline: {base['description']}")
    for note in results["notes"]:
        lines.append("")
        lines.append(f"Note: {note}")
    return "\n".join(lines) + "\n"


STAGE_NOTES = {
    SpanName.SELF_QUERY: "in-process instant LLM, on the helper pool",
    SpanName.QUERY_EXPANSION: "concurrent with self_query",
    SpanName.EMBED: "one batch of {expansion_n} queries",
    SpanName.SEARCH: "one query_batch_points per collection (brute force in local mode)",
    SpanName.RERANK: "length-sorted cross-encoder batches of 2 (before issue 18: one padded batch)",
    SpanName.PROMPT: "",
    SpanName.GENERATE: "call overhead only (instant LLM)",
    "api": "ASGI app in process: body parsing, response model, JSON, trace event (wall - pipeline total)",
}
BASELINE_STAGE_NOTES = {
    SpanName.EMBED: "; Handbook: SentenceTransformer.encode once per query ({expansion_n} calls)",
    SpanName.SEARCH: "; Handbook: one query_points per query and collection",
    SpanName.RERANK: "; Handbook: one CrossEncoder.predict on the same number of candidates",
}


def same_cpu(results: dict[str, Any], largest: int) -> list[str]:
    """The warm overhead at the largest store per thread count on each side: the pairs with the
    same count compare the stacks on the same CPU, and each row's ceiling is what the ratio
    would be if everything but our cross-encoder cost nothing."""
    base = results.get("baseline") or {}
    if "threads" not in base:
        return []
    ours = {int(results["ort_threads"]): results["warm"][largest]["stages"]}
    ours.update({int(t): v["stages"] for t, v in (results.get("warm_threads") or {}).items()})
    theirs = {int(base["threads"]): base["warm"][str(largest)]}
    theirs.update({int(t): v for t, v in (base.get("warm_threads") or {}).items()})
    pairs = [(t, t) for t in sorted(ours.keys() & theirs.keys())]
    defaults = (int(results["ort_threads"]), int(base["threads"]))
    if defaults not in pairs:
        pairs.append(defaults)
    lines = [
        "",
        f"Same CPU: warm overhead at {largest} points, p50 (ms), by thread count (ours: "
        "ORT_THREADS; Handbook: torch.set_num_threads); ceiling = Handbook total / our rerank:",
        "",
        "| threads ours / Handbook | ours total | Handbook total | ratio | ours rerank | "
        "Handbook rerank | ceiling | 2x goal |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mine, other in pairs:
        total, their_total = (
            percentile(ours[mine]["total"], 50),
            percentile(theirs[other]["total"], 50),
        )
        rerank = percentile(ours[mine][SpanName.RERANK], 50)
        their_rerank = percentile(theirs[other]["rerank"], 50)
        label = f"{mine} / {other}" + (
            " (each side's default)" if (mine, other) == defaults else ""
        )
        lines.append(
            f"| {label} | {total:.0f} | {their_total:.0f} | {their_total / total:.2f}x | "
            f"{rerank:.0f} | {their_rerank:.0f} | {their_total / rerank:.2f}x | "
            f"{'met' if their_total >= 2 * total else 'not met'} |"
        )
    return lines
