"""The business Lambda's memory size by cost per request, for `tools.bench` (`make bench`).

Lambda allocates CPU in proportion to memory: at 1,769 MB a function has the equivalent of one
vCPU, one vCPU-second of credit per second (https://docs.aws.amazon.com/lambda/latest/dg/
configuration-memory.html). Lambda bills duration x configured memory in GB-seconds plus a price
per request (https://aws.amazon.com/lambda/pricing/, tools/prices.json).

`measure` runs warm requests with 1 and 2 onnxruntime threads, unthrottled and, where this
process may write Linux CFS bandwidth cgroups (the same kind of limit as Lambda's CPU credits),
under each size's vCPU quota. `rows` prices each size from the CPU time a request needs divided
by the CPU it may use (`estimate`), with the quota-limited wall time beside it as a check;
`render` makes the table and `cheapest` picks the size.
"""

from __future__ import annotations

import contextlib
import os
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

MB_PER_VCPU = 1769
"""AWS: at 1,769 MB a function has the equivalent of one vCPU (configuration-memory.html)."""
SIZES_MB = (1024, 1280, 1536, 1769, 2048, 3538)
THREADS = (1, 2)
USD_PER_GB_S = 0.0000166667
"""x86, first pricing tier, us-east-1 (tools/prices.json, pay_per_use Lambda)."""
USD_PER_1M_REQUESTS = 0.20
COST_TIE = 0.05
"""Costs within 5 % of the lowest count as the lowest: run-to-run noise on a shared machine."""
RSS_HEADROOM = 1.2
"""A size must hold the measured peak RSS plus 20 %: the runtime, the Web Adapter extension and
allocator growth under load live in the same memory, and running out kills the sandbox."""
CFS_PERIOD_US = 100_000
CPU_CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")


def share(memory_mb: int) -> float:
    return memory_mb / MB_PER_VCPU


@dataclass(frozen=True)
class Sample:
    memory_mb: int | None
    """The quota this ran under; None: unthrottled."""
    threads: int
    wall_ms: float
    """Median request duration."""
    cpu_ms: float
    """Median process CPU time per request."""


@contextlib.contextmanager
def cpu_quota(vcpus: float | None) -> Iterator[None]:
    """Run the body with this whole process in a CFS bandwidth cgroup of `vcpus` CPUs (cgroup v1
    `cpu` controller); then move it back and remove the group. No quota: a no-op."""
    if vcpus is None:
        yield
        return
    group = CPU_CGROUP_ROOT / f"bench-lambda-{os.getpid()}"
    home = CPU_CGROUP_ROOT / _own_cpu_cgroup().lstrip("/")
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(round(vcpus * CFS_PERIOD_US)))
        (group / "cgroup.procs").write_text(str(os.getpid()))
        try:
            yield
        finally:
            (home / "cgroup.procs").write_text(str(os.getpid()))
    finally:
        group.rmdir()


def _own_cpu_cgroup() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    raise OSError("no cgroup v1 cpu controller for this process")


def quota_available() -> bool:
    """Whether this process may create CPU cgroups (root in a container that mounts them rw)."""
    try:
        with cpu_quota(1.0):
            return True
    except OSError:
        return False


Runner = Callable[[], tuple[list[float], list[float]]]
"""Serves warm requests; returns (wall ms, CPU ms) per request."""


def measure(
    open_runner: Callable[[int], AbstractContextManager[Runner]],
    sizes: Sequence[int] = SIZES_MB,
    threads: Sequence[int] = THREADS,
) -> list[Sample]:
    """`open_runner(threads)` gives a runner with that many onnxruntime threads. Each thread
    count runs unthrottled, then under each size's quota when cgroups can be written."""
    quotas: list[int | None] = [None, *(sizes if quota_available() else ())]
    samples = []
    for n in threads:
        with open_runner(n) as run:
            for memory_mb in quotas:
                with cpu_quota(share(memory_mb) if memory_mb else None):
                    wall, cpu = run()
                samples.append(
                    Sample(memory_mb, n, statistics.median(wall), statistics.median(cpu))
                )
    return samples


@dataclass(frozen=True)
class Row:
    memory_mb: int
    vcpu: float
    threads: int
    duration_ms: float
    """From the CPU time per request and the share (`estimate`): other jobs on a shared machine
    stretch wall times but hardly the CPU time a request needs."""
    measured_ms: float | None
    """Wall time under that share's quota, where cgroups could be written: the model's check."""
    fits: bool

    @property
    def gb_s(self) -> float:
        return self.duration_ms / 1e3 * self.memory_mb / 1024

    @property
    def usd_per_1m(self) -> float:
        return self.gb_s * USD_PER_GB_S * 1e6 + USD_PER_1M_REQUESTS


def estimate(free: Sample, memory_mb: int) -> float:
    """A CPU-bound request under a quota of s vCPUs: it needs `cpu_ms` of CPU and can use at most
    min(s, the parallelism it reached unthrottled) CPUs at a time."""
    parallelism = max(1.0, free.cpu_ms / free.wall_ms)
    return free.cpu_ms / min(share(memory_mb), parallelism)


def rows(
    samples: Sequence[Sample], peak_rss_mb: float, sizes: Sequence[int] = SIZES_MB
) -> list[Row]:
    out = []
    for free in (s for s in samples if s.memory_mb is None):
        measured = {s.memory_mb: s for s in samples if s.threads == free.threads and s.memory_mb}
        for memory_mb in sizes:
            hit = measured.get(memory_mb)
            out.append(
                Row(
                    memory_mb=memory_mb,
                    vcpu=share(memory_mb),
                    threads=free.threads,
                    duration_ms=estimate(free, memory_mb),
                    measured_ms=hit.wall_ms if hit else None,
                    fits=memory_mb >= peak_rss_mb * RSS_HEADROOM,
                )
            )
    return out


def cheapest(table: Sequence[Row]) -> Row:
    """The smallest size (then fewest threads) whose cost per request is the lowest (within
    COST_TIE) among the sizes that fit."""
    fitting = [r for r in table if r.fits]
    lowest = min(r.usd_per_1m for r in fitting)
    tied = [r for r in fitting if r.usd_per_1m <= lowest * (1 + COST_TIE)]
    return min(tied, key=lambda r: (r.memory_mb, r.threads))


def render(samples: Sequence[Sample], peak_rss_mb: float, current_mb: int) -> str:
    table = rows(samples, peak_rss_mb)
    pick = cheapest(table)
    free = {s.threads: s for s in samples if s.memory_mb is None}
    lines = [
        "| memory (MB) | vCPU share | ORT threads | duration p50, CPU model (ms) | measured under "
        "the quota (ms) | GB-s per request | $ per 1M requests | fits peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table:
        measured = f"{r.measured_ms:.0f}" if r.measured_ms is not None else "-"
        mark = (
            " **chosen**" if r == pick else (" (configured)" if r.memory_mb == current_mb else "")
        )
        lines.append(
            f"| {r.memory_mb}{mark} | {r.vcpu:.2f} | {r.threads} | {r.duration_ms:.0f} | {measured} | "
            f"{r.gb_s:.3f} | {r.usd_per_1m:.2f} | "
            f"{'yes' if r.fits else f'no (< {peak_rss_mb:.0f} MB x {RSS_HEADROOM})'} |"
        )
    lines += [
        "",
        "Unthrottled on this machine: "
        + "; ".join(
            f"{n} thread{'s' if n > 1 else ''}: wall {s.wall_ms:.0f} ms, CPU {s.cpu_ms:.0f} ms"
            for n, s in sorted(free.items())
        )
        + f". Price: ${USD_PER_GB_S:.10f}".rstrip("0")
        + f" per GB-s + ${USD_PER_1M_REQUESTS} per 1M requests (x86). "
        f"Cheapest per request that fits: {pick.memory_mb} MB with {pick.threads} ORT "
        f"thread{'s' if pick.threads > 1 else ''} (configured: {current_mb} MB). Duration here is "
        "the warm overhead with an instant LLM; time spent waiting for the model is billed at "
        "the same GB per second and favours smaller sizes further.",
    ]
    return "\n".join(lines)
