"""The timeout budget's arithmetic, in one place (DESIGN 5: API Gateway 29 s > Lambda >
SageMaker read timeout > generation). Pure constants and functions: the adapters use them to
configure their clients, the pipeline to size the generation call, the stack tests to prove the
deployed numbers line up.
"""

from __future__ import annotations

# --- SageMaker / TGI calls (rag.adapters.llm) -------------------------------------------------
MAX_ATTEMPTS = 2
"""botocore total attempts per invoke: one retry for fast, transient failures."""
FAST_FAILURE_S = 2.0
"""A failed attempt slower than this is not retried (the retry would not fit the budget)."""
RETRY_BACKOFF_MAX_S = 1.0
"""botocore standard backoff before the first retry: rand(0, 1) x 1 s (throttling scale)."""
ADAPTIVE_WAIT_MAX_S = 2.0
"""botocore adaptive mode token bucket: minimum fill rate 0.5 token/s, so at most 2 s per send."""

# --- the trace send to SQS (rag.adapters.trace_sinks), after the answer, on the request path ---
SQS_CONNECT_TIMEOUT_S = 0.5
SQS_READ_TIMEOUT_S = 1.0
SQS_MAX_ATTEMPTS = 2
"""Short and few: a slow SQS must cost the request little; a failed send is logged and counted."""
SQS_RETRY_BACKOFF_MAX_S = 1.0

DEFAULT_GENERATION_TOKENS_PER_S = 30.0
"""Decode speed assumed when sizing a buffered generation, in tokens per second per request:
an 8B model in bf16 on one A10G (ml.g5.2xlarge) under TGI decodes ~30 tokens/s."""

INVOCATION_MARGIN_S = 1.0
"""Kept back from the invocation's remaining time for the response and Lambda's own overhead."""

DEFAULT_STREAM_BUDGET_S = 300.0
"""Five minutes: a 2048-token answer at ~35 tokens/s (8B on one A10G) takes about one; API
Gateway allows a stream 15 minutes (and 5 idle), the Lambda timeout is set just above this."""

MIN_GENERATION_S = 2.0
"""Below this much time left, a generation could not produce a useful answer: 504 instead."""


def worst_case_call_s(connect_timeout_s: float, read_timeout_s: float) -> float:
    """Longest a `SageMakerLLM` call can take: a fast first failure, the backoff and adaptive
    wait, then a full second attempt (a read timeout is never retried)."""
    first_failure_s = max(connect_timeout_s, FAST_FAILURE_S)
    retry_wait_s = RETRY_BACKOFF_MAX_S + ADAPTIVE_WAIT_MAX_S
    return first_failure_s + retry_wait_s + connect_timeout_s + read_timeout_s


def worst_case_send_s() -> float:
    """Longest `SqsTraceSink.send` can hold the request: every attempt times out."""
    per_attempt = SQS_CONNECT_TIMEOUT_S + SQS_READ_TIMEOUT_S
    return SQS_MAX_ATTEMPTS * per_attempt + (SQS_MAX_ATTEMPTS - 1) * SQS_RETRY_BACKOFF_MAX_S


def effective_budget_s(configured_s: float | None, time_left_s: float | None) -> float | None:
    """The configured budget, never more than what the invocation has left less a margin, so a
    first request that paid for the cold start still ends inside the Lambda timeout."""
    if time_left_s is None:
        return configured_s
    left_s = time_left_s - INVOCATION_MARGIN_S
    return left_s if configured_s is None else min(configured_s, left_s)


def generation_timeout_s(
    *,
    read_timeout_s: float,
    connect_timeout_s: float,
    request_budget_s: float | None,
    elapsed_s: float,
) -> float | None:
    """The generation call's read timeout: `read_timeout_s`, shortened so that the call (with its
    one fast retry) and the trace send still end inside the request budget. None when no time is
    left for a useful generation (the caller answers 504 rather than be killed by the Lambda
    timeout, which would lose the answer and the trace)."""
    if request_budget_s is None:
        return read_timeout_s
    retry_overhead_s = worst_case_call_s(connect_timeout_s, 0)
    left_s = request_budget_s - elapsed_s - retry_overhead_s - worst_case_send_s()
    if left_s < MIN_GENERATION_S:
        return None
    return min(read_timeout_s, left_s)


def max_new_tokens_within(timeout_s: float, tokens_per_s: float) -> int:
    """The most new tokens a generation can produce before `timeout_s` at `tokens_per_s`: the
    buffered route clamps `max_new_tokens` to it, so a long answer is cut by the model's own
    limit (finish_reason "length") instead of timing out and losing everything."""
    return max(1, int(timeout_s * tokens_per_s))
