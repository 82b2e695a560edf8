"""GPU instance facts used to derive a model config's GPU count, memory and compute share.

Source: the Amazon EC2 / SageMaker instance type pages (accelerated computing: G5 = NVIDIA A10G
24 GiB, G6 = L4 24 GiB, G6e = L40S 48 GiB, P4d = A100 40 GiB, P5 = H100 80 GiB).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuInstance:
    gpus: int
    gpu_memory_gib_each: int
    vcpus: int
    memory_gib: int
    gpu_model: str

    @property
    def gpu_memory_gib(self) -> int:
        return self.gpus * self.gpu_memory_gib_each


def _family(
    prefix: str, gpu_gib: int, gpu_model: str, sizes: dict[str, tuple[int, int, int]]
) -> dict[str, GpuInstance]:
    return {
        f"ml.{prefix}.{size}": GpuInstance(gpus, gpu_gib, vcpus, mem, gpu_model)
        for size, (gpus, vcpus, mem) in sizes.items()
    }


_G5_G6_SIZES = {
    "xlarge": (1, 4, 16),
    "2xlarge": (1, 8, 32),
    "4xlarge": (1, 16, 64),
    "8xlarge": (1, 32, 128),
    "12xlarge": (4, 48, 192),
    "16xlarge": (1, 64, 256),
    "24xlarge": (4, 96, 384),
    "48xlarge": (8, 192, 768),
}
_G6E_SIZES = {
    "xlarge": (1, 4, 32),
    "2xlarge": (1, 8, 64),
    "4xlarge": (1, 16, 128),
    "8xlarge": (1, 32, 256),
    "12xlarge": (4, 48, 384),
    "16xlarge": (1, 64, 512),
    "24xlarge": (4, 96, 768),
    "48xlarge": (8, 192, 1536),
}

GPU_INSTANCES: dict[str, GpuInstance] = {
    **_family("g5", 24, "NVIDIA A10G", _G5_G6_SIZES),
    **_family("g6", 24, "NVIDIA L4", _G5_G6_SIZES),
    **_family("g6e", 48, "NVIDIA L40S", _G6E_SIZES),
    "ml.p4d.24xlarge": GpuInstance(8, 40, 96, 1152, "NVIDIA A100"),
    "ml.p5.48xlarge": GpuInstance(8, 80, 192, 2048, "NVIDIA H100"),
}
