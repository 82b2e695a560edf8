"""Retrieval metrics by source document id: hit rate@k, recall@k, MRR@k and nDCG@k.

Relevance is binary: a document is relevant when its id is among the question's labelled
`source_ids`. The retriever returns chunks; several chunks of one document count once, at the
rank of its first chunk (a document found twice is not twice as useful), so ranks below are
ranks among the distinct documents in the top k chunks. A question with no labelled source
(unanswerable) has no retrieval metric: it is left out of the means and counted apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

RETRIEVAL_METRICS = ("hit_rate", "recall", "mrr", "ndcg")


def distinct_ranked(document_ids: Iterable[str | None]) -> list[str]:
    """Document ids in first-seen order, each once; chunks with no document id are skipped."""
    seen: dict[str, None] = {}
    for document_id in document_ids:
        if document_id is not None and document_id not in seen:
            seen[document_id] = None
    return list(seen)


def retrieval_scores(
    retrieved: Sequence[str | None], relevant: Iterable[str], *, k: int
) -> dict[str, float]:
    """The four metrics of one question at cutoff k: `retrieved` is the document id of each
    returned chunk, best first (only the first k count); `relevant` must not be empty."""
    wanted = set(relevant)
    if not wanted:
        raise ValueError("a question without relevant documents has no retrieval metrics")
    if k < 1:
        raise ValueError("k must be at least 1")
    ranked = distinct_ranked(retrieved[:k])
    hits = [rank for rank, document_id in enumerate(ranked, start=1) if document_id in wanted]
    dcg = sum(1 / math.log2(rank + 1) for rank in hits)
    # The best possible ranking puts every relevant document first, as far as k chunks allow.
    ideal = sum(1 / math.log2(rank + 1) for rank in range(1, min(len(wanted), k) + 1))
    return {
        "hit_rate": 1.0 if hits else 0.0,
        "recall": len(hits) / len(wanted),
        "mrr": 1 / hits[0] if hits else 0.0,
        "ndcg": dcg / ideal if ideal else 0.0,
    }


@dataclass(frozen=True)
class Summary:
    """Means of each metric over the questions that have one; `n` counts those questions."""

    n: int
    means: Mapping[str, float]


def summarize(rows: Iterable[Mapping[str, float]]) -> Summary:
    """Mean of each metric present in the rows (a row may lack some, e.g. failed judge calls)."""
    totals: dict[str, list[float]] = {}
    n = 0
    for row in rows:
        n += 1
        for name, value in row.items():
            totals.setdefault(name, []).append(value)
    return Summary(n=n, means={name: sum(v) / len(v) for name, v in totals.items()})
