"""`make eval` in-process over real local parts: tiny ONNX models, an embedded Qdrant filled by
feature.ingest, a TGI-protocol fake as the twin model and an OpenAI-compatible fake as the judge
(both devkit/fakes/tgi_server.py), the real opik client against the local Opik recorder.

Documented behaviour relied on:
- Opik's LLM-judge metrics take any `OpikBaseModel` subclass as `model` (the documented way to
  use a custom provider: opik `evaluation/models/base_model.py`, "If you want to implement a
  custom LLM provider in evaluation metrics, you should inherit from this class") and parse a JSON
  reply with `answer_relevance_score`, `score` (hallucination), `context_precision_score`,
  `context_recall_score` and `reason` (each metric's `parser.py`).
- `opik.evaluate` creates an experiment over a dataset, logs one trace per dataset item with its
  feedback scores and links them as experiment items (https://www.comet.com/docs/opik/evaluation/
  evaluate_your_llm; REST paths from opik's `rest_api/{datasets,experiments,traces}/raw_client.py`).
- OpenAI-compatible chat completions: POST /v1/chat/completions with `messages`
  (TGI 3.3.6 OpenAPI spec, docs/contracts/tgi-openapi.json).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.fakes.opik_recorder import OpikRecorder
from devkit.fakes.tgi_server import Fault, TgiServer, fixed
from devkit.tiny_models import build_cross_encoder, build_embedder
from tools import evaluate
from tools.local_server import LocalServer, local_app

CORPUS = [
    {
        "collection": "posts",
        "id": "post-dpo",
        "author_full_name": "Elias Brandt",
        "platform": "x",
        "content": "DPO needs no reward model: the policy log ratio to a reference model is the reward.",
    },
    {
        "collection": "posts",
        "id": "post-qdrant",
        "author_full_name": "Maya Okafor",
        "platform": "linkedin",
        "content": "Qdrant payload filters on author keep a vector search to one author.",
    },
    {
        "collection": "articles",
        "id": "art-pgvector",
        "author_full_name": "Sofia Marchetti",
        "platform": "medium",
        "link": "https://example.com/pgvector",
        "content": "Postgres with pgvector is enough vector database for a few million rows.",
    },
]
QUESTIONS: list[dict[str, Any]] = [
    {
        "question": "Does DPO need a reward model?",
        "source_ids": ["post-dpo"],
        "reference_answer": "No, the policy log ratio is the reward.",
        "category": "direct",
    },
    {
        "question": "What does Maya Okafor say about Qdrant filters?",
        "author": "Maya Okafor",
        "source_ids": ["post-qdrant"],
        "reference_answer": "Payload filters keep search to one author.",
        "category": "author_filtered",
    },
    {
        "question": "Is pgvector enough or do I need a vector database?",
        "source_ids": ["art-pgvector", "post-qdrant"],
        "reference_answer": "Sofia says pgvector is enough for a few million rows.",
        "category": "contested",
    },
    {
        "question": "What is the capital of Australia?",
        "source_ids": [],
        "reference_answer": "The context does not answer this question.",
        "category": "unanswerable",
    },
]
JUDGE_REPLY = {
    "answer_relevance_score": 0.75,
    "score": 0.0,
    "context_precision_score": 0.5,
    "context_recall_score": 0.25,
    "reason": "stand-in judge",
}
"""One reply every Opik metric parses: each reads its own key."""
WORDS = sorted({w.strip(".,:?").lower() for d in CORPUS for w in d["content"].split()})


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in CORPUS))
    dataset = tmp_path / "tiny-qa.jsonl"
    dataset.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return {
        "corpus": corpus,
        "dataset": dataset,
        "embedding": build_embedder(tmp_path / "embedding", words=WORDS),
        "reranker": build_cross_encoder(tmp_path / "reranker", words=WORDS),
        "out": tmp_path / "out",
    }


@pytest.fixture
def opik(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpikRecorder]:
    with OpikRecorder() as recorder:
        monkeypatch.setenv("OPIK_URL_OVERRIDE", recorder.url)
        monkeypatch.setenv("OPIK_WORKSPACE", "twin-team")
        monkeypatch.setenv("OPIK_PROJECT_NAME", "llm-twin-eval-test")
        monkeypatch.delenv("OPIK_API_KEY", raising=False)
        yield recorder


def _env(files: dict[str, Path], **extra: str) -> dict[str, str]:
    return {
        "EMBEDDING_MODEL_DIR": str(files["embedding"]),
        "RERANKER_MODEL_DIR": str(files["reranker"]),
        "SELF_QUERY_ENABLED": "false",
        "EXPANSION_N": "1",
        **extra,
    }


def _args(files: dict[str, Path], *more: str) -> list[str]:
    return [
        "--dataset",
        str(files["dataset"]),
        "--corpus",
        str(files["corpus"]),
        "--out",
        str(files["out"]),
        "--concurrency",
        "2",
        *more,
    ]


def _report(files: dict[str, Path]) -> dict[str, Any]:
    (json_path,) = files["out"].glob("*.json")
    assert json_path.with_suffix(".md").is_file()
    report: dict[str, Any] = json.loads(json_path.read_text())
    return report


def test_in_process_run_scores_answers_with_the_judge_and_logs_an_opik_experiment(
    files: dict[str, Path], opik: OpikRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a TGI server as the twin model whose first generation fails, and an
    # OpenAI-compatible judge
    with (
        TgiServer(responder=fixed("DPO needs no reward model.")) as model,
        TgiServer(responder=fixed(json.dumps(JUDGE_REPLY))) as judge,
    ):
        model.queue(Fault.http_status(500, "CUDA out of memory"))
        env = _env(files, LLM_URL=model.url, JUDGE_URL=judge.url, JUDGE_API="openai")
        env["OPIK_URL_OVERRIDE"] = opik.url

        # When the dataset is evaluated in-process
        code = evaluate.main(_args(files, "--k", "2"), environ=env)

        judge_calls = [r for r in judge.requests if r.path == "/v1/chat/completions"]

    # Then the run completes: the failed question is reported, the others are scored
    assert code == 0
    report = _report(files)
    (column,) = report["columns"]
    failed = [q for q in column["questions"] if q["error"]]
    assert len(failed) == 1 and "CUDA out of memory" in failed[0]["error"]
    assert column["summary"]["overall"]["failed"] == 1
    scored = [q for q in column["questions"] if not q["error"]]
    for q in scored:
        # the judge's four metrics, exactly as the judge scored them
        assert q["scores"]["answer_relevance"] == 0.75
        assert q["scores"]["hallucination"] == 0.0
        assert q["scores"]["context_precision"] == 0.5
        assert q["scores"]["context_recall"] == 0.25
        assert q["answer"] == "DPO needs no reward model."
        if q["source_ids"]:
            assert set(q["scores"]) >= {"hit_rate", "recall", "mrr", "ndcg"}
            # retrieval is scored by document id, as the labels are written
            assert set(q["retrieved_document_ids"]) <= {d["id"] for d in CORPUS}
        else:
            assert "recall" not in q["scores"]
    # the judge got the question, the answer and the retrieved context, 4 calls per answer
    assert len(judge_calls) == 4 * len(scored)
    assert all(r.body["messages"] for r in judge_calls)
    assert any(q["question"] in json.dumps(r.body) for q in scored for r in judge_calls)
    # the author-filtered question only got that author's chunks
    maya = next(q for q in column["questions"] if q["category"] == "author_filtered")
    assert maya["error"] or set(maya["retrieved_document_ids"]) == {"post-qdrant"}

    # And Opik has the dataset (named after the file), one experiment, one item per question
    assert set(opik.datasets) == {"tiny-qa"}
    items = opik.dataset_items("tiny-qa")
    assert sorted(i["data"]["question"] for i in items) == sorted(q["question"] for q in QUESTIONS)
    (experiment,) = opik.experiments.values()
    assert experiment["dataset_name"] == "tiny-qa"
    assert experiment["name"].startswith("tiny-qa-")
    assert experiment["metadata"]["k"] == 2
    linked = [i for i in opik.experiment_items if i["experiment_id"] == experiment["id"]]
    assert len(linked) == len(QUESTIONS)
    names = {s["name"] for s in opik.feedback_scores}
    assert {"answer_relevance", "hallucination", "recall", "ndcg", "failed"} <= names
    assert "Opik experiment" in capsys.readouterr().out


def test_compare_prints_both_settings_and_the_difference_and_says_the_judge_is_skipped(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given no judge and no LLM: retrieval only
    code = evaluate.main(
        _args(files, "--compare", "RERANK_ENABLED=false", "RERANK_ENABLED=true"),
        environ=_env(files),
    )

    assert code == 0
    out = capsys.readouterr().out
    assert "answer metrics skipped: no judge" in out
    report = _report(files)
    a, b = report["columns"]
    assert (a["label"], b["label"]) == ("RERANK_ENABLED=false", "RERANK_ENABLED=true")
    assert (a["config"]["rerank_enabled"], b["config"]["rerank_enabled"]) == (False, True)
    # each cell of the overall row reads "A / B (B-A)"
    overall = next(line for line in out.splitlines() if line.startswith("| overall"))
    a_recall = a["summary"]["overall"]["means"]["recall"]
    b_recall = b["summary"]["overall"]["means"]["recall"]
    assert f"{a_recall:.3f} / {b_recall:.3f} ({b_recall - a_recall:+.3f})" in overall
    assert "answer_relevance" not in overall


def test_a_bad_dataset_line_is_named_and_nothing_runs(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files["dataset"].write_text(json.dumps({**QUESTIONS[0], "category": "trivia"}) + "\n")

    assert evaluate.main(_args(files), environ=_env(files)) == 2
    assert "tiny-qa.jsonl:1" in capsys.readouterr().err
    assert not files["out"].exists()


def test_the_shipped_set_covers_every_category_with_corpus_document_ids() -> None:
    """The issue's minimum: >= 40 questions, all six categories, ids that exist in the corpus."""
    questions = evaluate.load_dataset(evaluate.DEFAULT_DATASET)
    corpus_ids = {
        json.loads(line)["id"] for line in evaluate.DEFAULT_CORPUS.read_text().splitlines()
    }

    assert len(questions) >= 40
    assert {q.category for q in questions} == set(evaluate.CATEGORIES)
    for q in questions:
        assert set(q.source_ids) <= corpus_ids, q.question
        assert bool(q.source_ids) == (q.category != "unanswerable"), q.question


def test_api_mode_scores_a_running_api_like_the_in_process_run(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """API mode (API_URL, API_KEY) posts the documented HTTP contract (DESIGN 3.1: POST /rag with
    include_context, x-api-key as API Gateway reads it) to a running server: here the Lambda's
    own app in local mode over real HTTP. Over the same store it must score exactly what the
    in-process run scores, and a refused key is reported per question, never dropping the run."""
    store = tmp_path / "qdrant"
    evaluate.fill_store(store, files["corpus"], files["embedding"])
    with (
        TgiServer(responder=fixed("DPO needs no reward model.")) as model,
        TgiServer(responder=fixed(json.dumps(JUDGE_REPLY))) as judge,
    ):
        env = _env(
            files,
            LLM_URL=model.url,
            JUDGE_URL=judge.url,
            JUDGE_API="openai",
            QDRANT_PATH=str(store),
        )
        # Given the in-process figures over that store
        assert evaluate.main(_args(files), environ=env) == 0
        in_process = _report(files)["columns"][0]
        for path in files["out"].iterdir():
            path.unlink()

        # When the same questions go to the app served over HTTP, with the API key in the env
        with evaluate.in_process_target(env, answers=True) as target:
            app = local_app(target.deps, api_key="twin-key")
            with LocalServer(app) as server:
                url = server.url
                api_env = {"API_URL": url, "API_KEY": "twin-key", **env}
                assert evaluate.main(_args(files), environ=api_env) == 0
                over_http = _report(files)["columns"][0]
                for path in files["out"].iterdir():
                    path.unlink()
                wrong_key = {**api_env, "API_KEY": "not-the-key"}
                assert evaluate.main(_args(files), environ=wrong_key) == 0
                refused = _report(files)["columns"][0]

    # Then the API column scores exactly what in-process scored, answers judged the same way
    assert over_http["label"] == "api" and over_http["config"]["api_url"] == url
    by_question = {q["question"]: q for q in in_process["questions"]}
    for q in over_http["questions"]:
        assert q["error"] is None, q["error"]
        assert q["retrieved_document_ids"] == by_question[q["question"]]["retrieved_document_ids"]
        assert q["scores"] == by_question[q["question"]]["scores"]
        assert q["answer"] == "DPO needs no reward model."
    # And a refused key fails every question, each reported with the API's status
    assert refused["summary"]["overall"]["failed"] == len(QUESTIONS)
    assert all("403" in q["error"] for q in refused["questions"])
