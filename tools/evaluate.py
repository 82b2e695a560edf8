"""`make eval`: run a labelled question set through the pipeline and score it.

    python -m tools.evaluate                                  # in-process, the local-mode wiring
    python -m tools.evaluate --api-url URL --api-key KEY      # a running API (local or deployed)
    python -m tools.evaluate --compare RERANK_ENABLED=true RERANK_ENABLED=false

Retrieval is scored by source document id (tools.eval_metrics). Answers are scored by an LLM
judge through Opik's evaluation metrics when JUDGE_URL (any OpenAI-compatible or TGI server) or
JUDGE_ENDPOINT (a SageMaker endpoint) is set; otherwise that part is skipped and the report
says so. With OPIK_URL_OVERRIDE or OPIK_API_KEY set, each run is also logged as an Opik
experiment over a dataset named after the question file, so runs compare in Opik's UI.
Writes build/eval/<timestamp>.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tools.eval_metrics import RETRIEVAL_METRICS, retrieval_scores, summarize

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATASET = REPO / "eval" / "llm-twin-qa.jsonl"
DEFAULT_CORPUS = REPO / "sample_data" / "corpus.jsonl"
DEFAULT_OUT = REPO / "build" / "eval"
DEFAULT_MODELS = REPO / "build" / "models"
DEFAULT_K = 3
"""The API's default k (DESIGN 3.1), so the figures describe what a client gets by default."""
DEFAULT_CONCURRENCY = 4
HTTP_TIMEOUT_S = 60.0
"""Above API Gateway's 29 s: the gateway, not this client, decides when a request failed."""
JUDGE_READ_TIMEOUT_S = 120.0
JUDGE_CONNECT_TIMEOUT_S = 5.0
JUDGE_MAX_NEW_TOKENS = 512
JUDGE_METRICS = ("answer_relevance", "hallucination", "context_precision", "context_recall")
Category = Literal[
    "direct", "paraphrased", "author_filtered", "multi_source", "contested", "unanswerable"
]
CATEGORIES: tuple[str, ...] = Category.__args__  # type: ignore[attr-defined]


class Question(BaseModel):
    """One line of the dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    question: str = Field(min_length=1)
    author: str | None = None
    source_ids: tuple[str, ...]
    """Document ids (the payload's `document_id`) that answer it; empty when nothing does."""
    reference_answer: str = Field(min_length=1)
    category: Category


class DatasetError(Exception):
    pass


def load_dataset(path: Path) -> list[Question]:
    questions: list[Question] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            questions.append(Question.model_validate_json(line))
        except ValidationError as exc:
            raise DatasetError(f"{path}:{number}: {exc.errors()[0]['msg']}") from None
    if not questions:
        raise DatasetError(f"{path}: no questions")
    return questions


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Outcome:
    document_ids: list[str | None]
    """The document id of each returned chunk, best first."""
    answer: str | None = None
    contexts: list[str] = field(default_factory=list)
    """The chunks' text given to the model (for the judge)."""


class Target(Protocol):
    description: str
    answers: bool
    """Whether run() generates an answer (needs a model), or only retrieves."""

    def run(self, question: Question, *, k: int, send_author: bool) -> Outcome: ...


class InProcessTarget:
    """The pipeline called directly over `deps` (rag.wiring.build_deps, as in local mode)."""

    def __init__(self, deps: Any, *, answers: bool) -> None:
        self.deps = deps
        self.answers = answers and deps.llm is not None
        self.description = "in-process"

    def run(self, question: Question, *, k: int, send_author: bool) -> Outcome:
        from rag.domain import pipeline
        from rag.domain.models import RagRequest, RetrieveRequest

        author = question.author if send_author else None
        if not self.answers:
            retrieved = pipeline.retrieve(
                RetrieveRequest(query=question.question, k=k, author=author), self.deps
            )
            return Outcome([c.document_id for c in retrieved.chunks])
        answered = pipeline.answer(
            RagRequest(query=question.question, k=k, author=author, include_context=True),
            self.deps,
        )
        return Outcome(
            [c.document_id for c in answered.retrieval.chunks],
            answered.answer,
            [c.content for c in answered.sources],
        )


class HttpTarget:
    """A running API: POST /retrieve, or POST /rag with include_context (DESIGN 3.1)."""

    def __init__(self, url: str, api_key: str | None, *, answers: bool) -> None:
        import httpx

        headers = {"x-api-key": api_key} if api_key else {}
        self.client = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=HTTP_TIMEOUT_S
        )
        self.answers = answers
        self.description = f"API at {url}"

    def run(self, question: Question, *, k: int, send_author: bool) -> Outcome:
        body: dict[str, Any] = {"query": question.question, "k": k}
        if send_author and question.author:
            body["author"] = question.author
        if not self.answers:
            data = self._post("/retrieve", body)
            return Outcome([c.get("document_id") for c in data["chunks"]])
        data = self._post("/rag", {**body, "include_context": True})
        return Outcome(
            [s.get("document_id") for s in data["sources"]],
            data["answer"],
            [c["content"] for c in data.get("context") or []],
        )

    def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        response = self.client.post(path, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:300]}")
        data: dict[str, Any] = response.json()
        return data

    def close(self) -> None:
        self.client.close()


@dataclass
class Result:
    question: Question
    outcome: Outcome | None = None
    error: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    judge_errors: list[str] = field(default_factory=list)


def run_questions(
    questions: Sequence[Question],
    target: Target,
    *,
    k: int,
    send_author: bool,
    concurrency: int,
    desc: str = "questions",
) -> list[Result]:
    """Every question through the target, `concurrency` at a time; a failure is kept with its
    message and the run goes on."""
    from tqdm import tqdm

    def one(question: Question) -> Result:
        try:
            outcome = target.run(question, k=k, send_author=send_author)
        except Exception as exc:  # reported per question: one bad answer must not end the run
            return Result(question, error=f"{type(exc).__name__}: {exc}")
        result = Result(question, outcome)
        if question.source_ids:
            result.scores.update(retrieval_scores(outcome.document_ids, question.source_ids, k=k))
        return result

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(
            tqdm(pool.map(one, questions), total=len(questions), desc=desc, file=sys.stderr)
        )
    return results


# --------------------------------------------------------------------------- judge


def build_judge(env: Mapping[str, str]) -> Any | None:
    """An Opik judge model over this project's LLM adapters, or None when none is configured:
    JUDGE_URL (+ JUDGE_API openai|tgi, JUDGE_MODEL) or JUDGE_ENDPOINT (+ JUDGE_INFERENCE_COMPONENT)."""
    from rag.adapters.llm.build import build_llm

    llm = build_llm(
        url=env.get("JUDGE_URL") or None,
        api="tgi" if env.get("JUDGE_API") == "tgi" else "openai",
        endpoint=env.get("JUDGE_ENDPOINT") or None,
        inference_component=env.get("JUDGE_INFERENCE_COMPONENT") or None,
        connect_timeout_s=JUDGE_CONNECT_TIMEOUT_S,
        read_timeout_s=JUDGE_READ_TIMEOUT_S,
        model=env.get("JUDGE_MODEL") or None,
    )
    return None if llm is None else judge_model(llm)


def judge_model(llm: Any) -> Any:
    """Opik's documented extension point for a custom judge (`OpikBaseModel`), calling the
    Messages API of `llm` (a rag.domain.ports.LLM): any OpenAI-compatible URL, TGI or SageMaker."""
    from opik.evaluation.models import OpikBaseModel

    from rag.domain.ports import GenerationParams

    params = GenerationParams(max_new_tokens=JUDGE_MAX_NEW_TOKENS, temperature=0.0, top_p=1.0)

    class ProjectLLMJudge(OpikBaseModel):
        def generate_provider_response(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
            return llm.chat(messages, params)

        def generate_chat_completion(
            self, messages: Any, response_format: Any = None, **kwargs: Any
        ) -> Any:
            # No structured-output request: Opik's prompts ask for the JSON and its parsers
            # find it in the text, and many OpenAI-compatible servers reject json_schema.
            return {"role": "assistant", "content": llm.chat(messages, params).text}

        def generate_string(self, input: str, response_format: Any = None, **kwargs: Any) -> str:
            message = self.generate_chat_completion(
                [{"role": "user", "content": input}], response_format
            )
            return str(message["content"])

    return ProjectLLMJudge(llm.description)


def judge_results(results: Sequence[Result], judge: Any, *, concurrency: int) -> None:
    """Adds the four judge scores to each answered result (a failed metric is noted, not fatal).
    hallucination: 1 = the answer is not supported by the retrieved context (lower is better)."""
    from opik.evaluation.metrics import (
        AnswerRelevance,
        ContextPrecision,
        ContextRecall,
        Hallucination,
    )
    from tqdm import tqdm

    metrics: dict[str, Any] = {
        "answer_relevance": AnswerRelevance(model=judge, track=False, require_context=False),
        "hallucination": Hallucination(model=judge, track=False),
        "context_precision": ContextPrecision(model=judge, track=False),
        "context_recall": ContextRecall(model=judge, track=False),
    }

    def one(result: Result) -> None:
        outcome = result.outcome
        if outcome is None or outcome.answer is None:
            return
        q = result.question
        for name, metric in metrics.items():
            try:
                scored = metric.score(
                    input=q.question,
                    output=outcome.answer,
                    context=outcome.contexts,
                    expected_output=q.reference_answer,
                )
                result.scores[name] = float(scored.value)
            except Exception as exc:  # one failed judge call leaves that score out
                result.judge_errors.append(f"{name}: {type(exc).__name__}: {exc}")

    answered = [r for r in results if r.outcome and r.outcome.answer is not None]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(tqdm(pool.map(one, answered), total=len(answered), desc="judge", file=sys.stderr))


# --------------------------------------------------------------------------- Opik experiment


def opik_configured(env: Mapping[str, str]) -> bool:
    return bool(env.get("OPIK_URL_OVERRIDE") or env.get("OPIK_API_KEY"))


def log_experiment(
    results: Sequence[Result],
    *,
    dataset_name: str,
    experiment_name: str,
    config: Mapping[str, Any],
) -> str:
    """Logs the scored run as an Opik experiment over dataset `dataset_name` (created or reused;
    Opik deduplicates identical items), through `opik.evaluate`, whose task hands back what the
    run already produced. Returns the experiment id."""
    import opik
    from opik.evaluation.metrics import base_metric, score_result

    by_question = {r.question.question: r for r in results}

    class RunScores(base_metric.BaseMetric):
        """The scores this run computed, reported to Opik unchanged."""

        def score(self, question: str, **ignored: Any) -> list[score_result.ScoreResult]:
            result = by_question[question]
            if result.error:
                return [score_result.ScoreResult("failed", 1.0, reason=result.error)]
            return [score_result.ScoreResult(n, v) for n, v in result.scores.items()]

    client = opik.Opik()
    dataset = client.get_or_create_dataset(dataset_name)
    dataset.insert([r.question.model_dump(mode="json") for r in results])

    def task(item: dict[str, Any]) -> dict[str, Any]:
        result = by_question[item["question"]]
        outcome = result.outcome
        return {
            "question": item["question"],
            "answer": outcome.answer if outcome else None,
            "document_ids": outcome.document_ids if outcome else [],
            "error": result.error,
        }

    evaluation = opik.evaluate(
        dataset=dataset,
        task=task,
        scoring_metrics=[RunScores(name="llm_twin_eval", track=False)],
        experiment_name=experiment_name,
        experiment_config=dict(config),
        task_threads=1,
        verbose=0,
    )
    client.flush()
    return str(evaluation.experiment_id)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Column:
    label: str
    results: list[Result]
    config: dict[str, Any]


def summary_rows(results: Sequence[Result]) -> dict[str, dict[str, Any]]:
    """Per scope (overall, then each category present): question count, failures, and the mean
    of each metric over the questions that have it (with how many that is)."""
    scopes = {"overall": list(results)}
    for category in CATEGORIES:
        members = [r for r in results if r.question.category == category]
        if members:
            scopes[category] = members
    rows: dict[str, dict[str, Any]] = {}
    for scope, members in scopes.items():
        scored = [r.scores for r in members if r.error is None]
        summary = summarize(scored)
        counts = {name: sum(name in s for s in scored) for name in summary.means}
        rows[scope] = {
            "questions": len(members),
            "failed": sum(r.error is not None for r in members),
            "means": dict(summary.means),
            "counts": counts,
        }
    return rows


def _metric_names(columns: Sequence[Column], k: int) -> list[tuple[str, str]]:
    present = {name for c in columns for r in c.results for name in r.scores}
    names = [(m, f"{m}@{k}" if m != "mrr" else "MRR") for m in RETRIEVAL_METRICS if m in present]
    names += [(m, m) for m in JUDGE_METRICS if m in present]
    return names


def markdown_table(columns: Sequence[Column], k: int) -> str:
    """One row per scope; with two columns each cell reads `A / B (B-A)`."""
    names = _metric_names(columns, k)
    rows = [summary_rows(c.results) for c in columns]
    header = ["scope", "questions", "failed", *(label for _, label in names)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scope in rows[0]:
        cells = [scope, str(rows[0][scope]["questions"])]
        cells.append(" / ".join(str(r[scope]["failed"]) for r in rows))
        for name, _ in names:
            values = [r[scope]["means"].get(name) for r in rows]
            text = " / ".join("-" if v is None else f"{v:.3f}" for v in values)
            if len(values) == 2 and None not in values:
                text += f" ({values[1] - values[0]:+.3f})"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    columns: Sequence[Column], *, k: int, out_dir: Path, notes: Sequence[str], stamp: str
) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(columns, k)
    labels = " / ".join(c.label for c in columns)
    md = [f"# Evaluation {stamp}", "", f"Columns: {labels}. k = {k}.", "", table, ""]
    md += [f"- {note}" for note in notes]
    failures = [
        f"- [{c.label}] {r.question.question}: {r.error}"
        for c in columns
        for r in c.results
        if r.error
    ]
    if failures:
        md += ["", "Failed questions:", *failures]
    md_path = out_dir / f"{stamp}.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    payload = {
        "timestamp": stamp,
        "k": k,
        "notes": list(notes),
        "columns": [
            {
                "label": c.label,
                "config": c.config,
                "summary": summary_rows(c.results),
                "questions": [
                    {
                        **r.question.model_dump(mode="json"),
                        "retrieved_document_ids": r.outcome.document_ids if r.outcome else None,
                        "answer": r.outcome.answer if r.outcome else None,
                        "scores": r.scores,
                        "error": r.error,
                        "judge_errors": r.judge_errors,
                    }
                    for r in c.results
                ],
            }
            for c in columns
        ],
    }
    json_path = out_dir / f"{stamp}.json"
    json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return json_path, md_path


# --------------------------------------------------------------------------- in-process setup


def local_env(environ: Mapping[str, str], notes: list[str]) -> dict[str, str]:
    """The local-mode settings: model folders from build/models when not set; without a
    cross-encoder folder, rerank off (as `make local` does) with a note."""
    env = dict(environ)
    embedding = Path(env.get("EMBEDDING_MODEL_DIR") or DEFAULT_MODELS / "embedding")
    if not (embedding / "model.onnx").is_file():
        raise DatasetError(
            f"no embedding model at {embedding}: run `make models` or set EMBEDDING_MODEL_DIR"
        )
    env["EMBEDDING_MODEL_DIR"] = str(embedding)
    reranker = Path(env.get("RERANKER_MODEL_DIR") or DEFAULT_MODELS / "reranker")
    if env.get("RERANK_ENABLED", "true").lower() != "false":
        if (reranker / "model.onnx").is_file():
            env["RERANKER_MODEL_DIR"] = str(reranker)
        else:
            env["RERANK_ENABLED"] = "false"
            notes.append(f"reranker off: no cross-encoder at {reranker} (set RERANKER_MODEL_DIR)")
    # Evaluation requests are not user traffic: no trace file unless asked for.
    env.setdefault("TRACE_FILE", "")
    return env


def fill_store(path: Path, corpus: Path, embedding_dir: Path) -> None:
    """Ingest `corpus` into an embedded Qdrant at `path` (feature.ingest, as `make ingest`)."""
    from qdrant_client import QdrantClient

    from feature.chunking import Chunker
    from feature.ingest import ingest_file
    from rag.adapters.onnx_models import OnnxEmbedder

    embedder = OnnxEmbedder(embedding_dir, threads=os.cpu_count() or 1)
    client = QdrantClient(path=str(path))
    try:
        report = ingest_file(
            corpus,
            client=client,
            embedder=embedder,
            chunker=Chunker(embedder.tokenizer, max_length=embedder.max_length),
        )
    finally:
        client.close()
    if report.bad_lines:
        raise DatasetError(f"{corpus}: {len(report.bad_lines)} bad lines: {report.bad_lines[0]}")


@contextmanager
def in_process_target(env: Mapping[str, str], *, answers: bool) -> Iterator[InProcessTarget]:
    from rag.settings import Settings
    from rag.wiring import build_deps

    deps = build_deps(Settings.from_env(env))
    try:
        yield InProcessTarget(deps, answers=answers)
    finally:
        for resource in (deps.store, deps.llm):
            close = getattr(resource, "close", None)
            if callable(close):
                close()


def parse_overrides(text: str) -> dict[str, str]:
    """`NAME=VALUE[,NAME=VALUE...]` -> {NAME: VALUE}."""
    overrides: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {part!r}")
        overrides[name.strip()] = value.strip()
    return overrides


# --------------------------------------------------------------------------- main


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__)
    p.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    p.add_argument(
        "--k", type=int, default=DEFAULT_K, help=f"chunks per question (default {DEFAULT_K})"
    )
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    p.add_argument("--api-url", default=env.get("API_URL") or None)
    p.add_argument("--api-key", default=env.get("API_KEY") or None)
    p.add_argument(
        "--corpus",
        type=Path,
        default=DEFAULT_CORPUS,
        help="in-process without QDRANT_URL/QDRANT_PATH: ingested into a fresh temporary store",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        type=parse_overrides,
        metavar=("A", "B"),
        help="two settings, e.g. RERANK_ENABLED=true RERANK_ENABLED=false (in-process only)",
    )
    p.add_argument(
        "--self-query",
        action="store_true",
        help="leave the labelled author out of requests, so self-query has to find it",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ if environ is None else environ)
    args = _parser(env).parse_args(argv)
    notes: list[str] = []
    try:
        questions = load_dataset(args.dataset)
        if args.compare and args.api_url:
            raise DatasetError("--compare changes server settings: in-process mode only")
        judge = build_judge(env)
        if judge is None:
            notes.append(
                "answer metrics skipped: no judge (set JUDGE_URL to an OpenAI-compatible or TGI "
                "server, or JUDGE_ENDPOINT to a SageMaker endpoint)"
            )
        settings = args.compare or [{}]
        columns = _run_columns(args, env, questions, settings, judge, notes)
    except DatasetError as exc:
        print(f"eval: {exc}", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if opik_configured(env):
        for column in columns:
            experiment = log_experiment(
                column.results,
                dataset_name=args.dataset.stem,
                experiment_name=f"{args.dataset.stem}-{stamp}-{column.label}",
                config=column.config,
            )
            notes.append(
                f"Opik experiment {experiment} ({column.label}) over dataset {args.dataset.stem}"
            )
    json_path, md_path = write_report(columns, k=args.k, out_dir=args.out, notes=notes, stamp=stamp)
    print(markdown_table(columns, args.k))
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {json_path} and {md_path}")
    return 0


def _run_columns(
    args: argparse.Namespace,
    env: dict[str, str],
    questions: Sequence[Question],
    settings: Sequence[dict[str, str]],
    judge: Any | None,
    notes: list[str],
) -> list[Column]:
    def run(target: Target, label: str) -> list[Result]:
        results = run_questions(
            questions,
            target,
            k=args.k,
            send_author=not args.self_query,
            concurrency=args.concurrency,
            desc=label,
        )
        if judge is not None and target.answers:
            judge_results(results, judge, concurrency=args.concurrency)
        elif judge is not None:
            notes.append(f"{label}: answer metrics skipped: no LLM to answer with")
        return results

    config = {"k": args.k, "send_author": not args.self_query}
    if args.api_url:
        http = HttpTarget(args.api_url, args.api_key, answers=judge is not None)
        try:
            return [Column("api", run(http, "api"), {**config, "api_url": args.api_url})]
        finally:
            http.close()

    base = local_env(env, notes)
    with _store(base, args.corpus, notes) as store_env:
        columns = []
        for overrides in settings:
            label = ",".join(f"{n}={v}" for n, v in overrides.items()) or "in-process"
            column_env = {**base, **store_env, **overrides}
            with in_process_target(column_env, answers=judge is not None) as target:
                results = run(target, label)
            columns.append(Column(label, results, {**config, **_settings_of(column_env)}))
        return columns


@contextmanager
def _store(env: Mapping[str, str], corpus: Path, notes: list[str]) -> Iterator[dict[str, str]]:
    if env.get("QDRANT_URL") or env.get("QDRANT_PATH"):
        notes.append("Qdrant: the configured store (QDRANT_URL / QDRANT_PATH), not re-ingested")
        yield {}
        return
    with tempfile.TemporaryDirectory(prefix="eval-qdrant-") as folder:
        print(f"ingesting {corpus} into a temporary embedded Qdrant", file=sys.stderr)
        fill_store(Path(folder), corpus, Path(env["EMBEDDING_MODEL_DIR"]))
        notes.append(f"Qdrant: {corpus.name} ingested into a fresh embedded store")
        yield {"QDRANT_PATH": folder}


def _settings_of(env: Mapping[str, str]) -> dict[str, Any]:
    """What the report records of a column's settings (no secrets: names listed explicitly)."""
    from rag.settings import Settings

    s = Settings.from_env(env)
    return {
        "embedding_model_dir": s.embedding_model_dir,
        "rerank_enabled": s.rerank_enabled,
        "reranker_model_dir": s.reranker_model_dir if s.rerank_enabled else None,
        "expansion_n": s.expansion_n,
        "self_query_enabled": s.self_query_enabled,
        "llm": s.llm_endpoint or s.llm_url,
        "model": s.model_profile.model_id,
    }


if __name__ == "__main__":
    sys.exit(main())
