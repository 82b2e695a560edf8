"""The configured LLM adapter: a SageMaker endpoint or an HTTP server."""

from __future__ import annotations

from rag.adapters.llm.http import HttpLLM
from rag.adapters.llm.protocol import (
    Api,
    Engine,
)
from rag.adapters.llm.sagemaker import SageMakerLLM
from rag.domain.ports import LLM


def build_llm(
    *,
    url: str | None,
    api: Api = "tgi",
    endpoint: str | None,
    inference_component: str | None = None,
    connect_timeout_s: float,
    read_timeout_s: float,
    model: str | None = None,
    engine: Engine = "tgi",
) -> LLM | None:
    """The configured adapter: a SageMaker endpoint wins over a URL; None when neither is set
    (the caller answers 503 llm_not_configured). `engine` picks the endpoint's body format."""
    if endpoint:
        return SageMakerLLM(
            endpoint,
            inference_component or None,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            engine=engine,
            model=model,
        )
    if url:
        return HttpLLM(
            url,
            api=api,
            model=model,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
        )
    return None
