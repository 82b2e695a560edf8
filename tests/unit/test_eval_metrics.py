"""Retrieval metrics by document id, against hand-computed values.

Definitions: nDCG@N = DCG@N / ideal DCG@N, DCG with gain/log2(rank+1) (Jarvelin & Kekalainen,
as trec_eval's ndcg_cut computes it: trec_eval 9.0.4 `m_ndcg_cut.c`; ML.NET `RankingMetrics`
https://learn.microsoft.com/dotnet/api/microsoft.ml.data.rankingmetrics); MRR = reciprocal rank
of the first relevant item (torchmetrics RetrievalMRR,
https://lightning.ai/docs/torchmetrics/stable/retrieval/mrr.html); hit rate@K = at least one
relevant item in the top K, recall@K = share of relevant items in the top K (rag-plusplus-core
eval, https://docs.rs/rag-plusplus-core/latest/rag_plusplus_core/eval/index.html).
"""

from __future__ import annotations

import math

import pytest

from tools.eval_metrics import distinct_ranked, retrieval_scores, summarize


def test_first_chunk_relevant_scores_one_everywhere() -> None:
    # Given one relevant document, returned first
    scores = retrieval_scores(["a", "x", "y"], {"a"}, k=3)

    assert scores == {"hit_rate": 1.0, "recall": 1.0, "mrr": 1.0, "ndcg": 1.0}


def test_relevant_document_at_rank_three() -> None:
    scores = retrieval_scores(["x", "y", "a"], {"a"}, k=3)

    # DCG = 1/log2(4) = 0.5; ideal DCG (one relevant) = 1/log2(2) = 1
    assert scores == {"hit_rate": 1.0, "recall": 1.0, "mrr": pytest.approx(1 / 3), "ndcg": 0.5}


def test_two_of_three_relevant_found_at_ranks_two_and_three() -> None:
    scores = retrieval_scores(["x", "a", "b"], {"a", "b", "c"}, k=3)

    dcg = 1 / math.log2(3) + 1 / math.log2(4)  # 0.6309 + 0.5
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)  # 2.1309
    assert scores["hit_rate"] == 1.0
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["mrr"] == 0.5
    assert scores["ndcg"] == pytest.approx(dcg / ideal)
    assert scores["ndcg"] == pytest.approx(0.5307, abs=1e-4)


def test_more_relevant_documents_than_k_caps_the_ideal_ranking_at_k() -> None:
    # Given 4 relevant documents and k = 2, both slots relevant is the best possible ranking
    scores = retrieval_scores(["a", "b"], {"a", "b", "c", "d"}, k=2)

    assert scores["ndcg"] == pytest.approx(1.0)
    assert scores["recall"] == 0.5  # recall is not capped: half the sources are missing


def test_nothing_relevant_scores_zero() -> None:
    assert retrieval_scores(["x", "y"], {"a"}, k=2) == {
        "hit_rate": 0.0,
        "recall": 0.0,
        "mrr": 0.0,
        "ndcg": 0.0,
    }


def test_chunks_of_one_document_count_once_at_their_first_rank() -> None:
    # Given chunks a, a, b: the distinct documents are a (rank 1), b (rank 2)
    scores = retrieval_scores(["a", "a", "b"], {"b"}, k=3)

    assert scores["mrr"] == 0.5
    assert scores["ndcg"] == pytest.approx(1 / math.log2(3))


def test_only_the_first_k_chunks_count() -> None:
    scores = retrieval_scores(["x", "y", "a"], {"a"}, k=2)

    assert scores["hit_rate"] == 0.0
    assert scores["mrr"] == 0.0


def test_chunks_without_a_document_id_are_skipped() -> None:
    assert distinct_ranked([None, "a", None, "a", "b"]) == ["a", "b"]
    assert retrieval_scores([None, "a"], {"a"}, k=2)["mrr"] == 1.0


def test_a_question_without_sources_has_no_retrieval_metric() -> None:
    with pytest.raises(ValueError, match="without relevant documents"):
        retrieval_scores(["a"], set(), k=1)
    with pytest.raises(ValueError, match="k must be"):
        retrieval_scores(["a"], {"a"}, k=0)


def test_summary_means_each_metric_over_the_rows_that_have_it() -> None:
    summary = summarize([{"recall": 1.0, "mrr": 0.5}, {"recall": 0.0}, {"recall": 0.5}])

    assert summary.n == 3
    assert summary.means == {"recall": pytest.approx(0.5), "mrr": 0.5}
    assert summarize([]).means == {}
