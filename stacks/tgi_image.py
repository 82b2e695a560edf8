"""The Hugging Face TGI (huggingface-llm) Deep Learning Container image, per region.

The sagemaker SDK owns the table of TGI versions, ECR accounts and tags; we read it at synth
(no AWS call) so a new SDK release is the only thing to bump for a new TGI version.
"""

from __future__ import annotations

from functools import cache

FRAMEWORK = "huggingface-llm"
_ANY_GPU_INSTANCE = (
    "ml.g5.2xlarge"  # the URI does not depend on the GPU instance; the SDK wants one
)


@cache
def _config() -> dict:
    from sagemaker.core import image_uris

    return image_uris.config_for_framework(FRAMEWORK)["inference"]


def supported_versions() -> list[str]:
    return sorted(_config()["versions"], key=lambda v: tuple(int(p) for p in v.split(".")))


@cache
def image_uri(version: str, region: str) -> str:
    from sagemaker.core import image_uris

    return image_uris.retrieve(
        FRAMEWORK,
        region=region,
        version=version,
        image_scope="inference",
        instance_type=_ANY_GPU_INSTANCE,
    )


@cache
def regional_image_uris(version: str) -> dict[str, str]:
    """Every region the SDK knows an account for, mapped to that region's image URI."""
    regions = _config()["versions"][version]["registries"]
    return {region: image_uri(version, region) for region in sorted(regions)}


def registry_account(image: str) -> str:
    return image.split(".", 1)[0]


def repository_name(image: str) -> str:
    return image.split("/", 1)[1].split(":", 1)[0]
