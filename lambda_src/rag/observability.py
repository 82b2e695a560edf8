"""The package's one Logger and Metrics, plus the few metric helpers the pipeline uses.

Service name comes from POWERTOOLS_SERVICE_NAME (set by the stack); the handler adds the
correlation id (API Gateway request id) and flushes metrics.

No Powertools Tracer: the app runs under uvicorn behind the Lambda Web Adapter, not the Python
runtime's handler loop, so the X-Ray SDK would not see each invocation's trace id, and importing
and patching it cost ~0.5 s of cold init. Active tracing on the function (stacks) still records
Lambda's own service segments (init, invocation) without any SDK in the code.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

METRICS_NAMESPACE = "LlmTwin"

logger = Logger(utc=True)
metrics = Metrics(namespace=METRICS_NAMESPACE)


def record_stage_latency(stage: str, elapsed_ms: float) -> None:
    metrics.add_metric(name=f"{stage}_latency", unit=MetricUnit.Milliseconds, value=elapsed_ms)


def record_fallback(name: str) -> None:
    metrics.add_metric(name=f"{name}_fallback", unit=MetricUnit.Count, value=1)


def record_tokens(prompt_tokens: int | None, completion_tokens: int | None) -> None:
    if prompt_tokens is not None:
        metrics.add_metric(name="prompt_tokens", unit=MetricUnit.Count, value=prompt_tokens)
    if completion_tokens is not None:
        metrics.add_metric(name="completion_tokens", unit=MetricUnit.Count, value=completion_tokens)


def flush_metrics() -> None:
    """Publish what was recorded (EMF on stdout, read by CloudWatch); nothing when nothing was."""
    if metrics.metric_set:
        metrics.flush_metrics()
