"""The serving container images, per region: Hugging Face TGI (`huggingface-llm`) and AWS's vLLM
Deep Learning Container (`vllm`, its SageMaker variant).

The sagemaker SDK owns the table of versions, ECR accounts and tags; we read it at synth (no AWS
call) so a new SDK release is the only thing to bump for a new engine version.
"""

from __future__ import annotations

from functools import cache
from typing import Any

TGI_FRAMEWORK = "huggingface-llm"
VLLM_FRAMEWORK = "vllm"
"""AWS's vLLM DLC: its SageMaker tags take `SM_VLLM_*` variables (aws/model-hosting-container-
standards docs/sagemaker/01_quickstart.md; AWS DLC docs vllm/configuration). For the SDK's other
vLLM image, `huggingface-vllm` (its ModelBuilder default), we found no documented variables for the
limits we set, so we use the image whose contract is written down."""
FRAMEWORK = TGI_FRAMEWORK
_ANY_GPU_INSTANCE = (
    "ml.g5.2xlarge"  # the URI does not depend on the GPU instance; the SDK wants one
)


@cache
def _config(framework: str) -> dict[str, Any]:
    from sagemaker.core import image_uris

    config: dict[str, Any] = image_uris.config_for_framework(framework)["inference"]
    return config


def supported_versions(framework: str = FRAMEWORK) -> list[str]:
    return sorted(_config(framework)["versions"], key=lambda v: tuple(int(p) for p in v.split(".")))


@cache
def image_uri(version: str, region: str, framework: str = FRAMEWORK) -> str:
    from sagemaker.core import image_uris

    uri: str = image_uris.retrieve(
        framework,
        region=region,
        version=version,
        image_scope="inference",
        instance_type=_ANY_GPU_INSTANCE,
    )
    return uri


@cache
def regional_image_uris(version: str, framework: str = FRAMEWORK) -> dict[str, str]:
    """Every region the SDK knows an account for, mapped to that region's image URI."""
    regions = _config(framework)["versions"][version]["registries"]
    return {region: image_uri(version, region, framework) for region in sorted(regions)}


def registry_account(image: str) -> str:
    return image.split(".", 1)[0]


def repository_name(image: str) -> str:
    return image.split("/", 1)[1].split(":", 1)[0]
