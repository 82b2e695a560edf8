"""The business Lambda picks the request format from the engine its MODEL_PROFILE names: the
profile the endpoint stack writes (`ModelConfig.runtime_profile()`) is read back by the Lambda's
settings, and a SageMaker endpoint then gets vLLM's OpenAI bodies or TGI's.

vLLM's /invocations routes a body by its shape (chat if it has messages, else a completion with a
prompt; vllm-project/vllm `vllm/entrypoints/sagemaker/routes.py`), so the engine must be known
before the first call; TGI's /invocations takes its own `inputs` body."""

from __future__ import annotations

import pytest

from rag.adapters.llm.sagemaker import SageMakerLLM
from rag.settings import Settings
from rag.wiring import llm_from_settings
from stacks.config import load_model_config

ENDPOINT = {"LLM_ENDPOINT": "llm-twin-x", "LLM_INFERENCE_COMPONENT": "llm-twin-x-ic"}


@pytest.mark.parametrize(
    ("model", "engine"), [("twin-llama-3.1-8b-vllm", "vllm"), ("twin-llama-3.1-8b", "tgi")]
)
def test_the_stacks_profile_selects_the_endpoints_engine(model: str, engine: str) -> None:
    profile = load_model_config(model).runtime_profile_json()
    settings = Settings.from_env({**ENDPOINT, "MODEL_PROFILE": profile})

    llm = llm_from_settings(settings)

    assert isinstance(llm, SageMakerLLM)
    assert llm.engine == engine
    assert llm.model == "mlabonne/TwinLlama-3.1-8B-DPO"  # vLLM's served model name


def test_a_profile_without_engine_means_tgi() -> None:
    """Profiles written before the engine field existed keep working."""
    assert Settings.from_env({}).model_profile.engine == "tgi"


def test_a_vllm_endpoint_needs_the_served_model_name() -> None:
    with pytest.raises(ValueError, match="served model name"):
        SageMakerLLM("e", engine="vllm", connect_timeout_s=1, read_timeout_s=1)
