"""The memory-size cost model of tools.lambda_memory (no timing: fixed samples in, prices out)."""

from __future__ import annotations

import pytest

from tools import lambda_memory as lm


def test_one_vcpu_at_1769_mb() -> None:
    """AWS: "At 1,769 MB, a function has the equivalent of one vCPU (one vCPU-second of credits
    per second)", and CPU is allocated in proportion to memory
    (https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html)."""
    assert lm.share(1769) == pytest.approx(1.0)
    assert lm.share(3538) == pytest.approx(2.0)
    assert lm.share(1024) == pytest.approx(1024 / 1769)


def test_a_single_thread_below_one_vcpu_costs_the_same_gb_seconds() -> None:
    """Below one vCPU a CPU-bound request is stretched by 1769/M while billed at M/1024 GB
    (Lambda bills duration x configured memory, https://aws.amazon.com/lambda/pricing/), so its
    GB-s stay flat; above one vCPU a single thread gets no faster and GB-s grow with M."""
    # Given a single-threaded request needing 500 ms of CPU, unthrottled
    free = lm.Sample(memory_mb=None, threads=1, wall_ms=500.0, cpu_ms=500.0)
    # When it is priced at each size
    by_size = {r.memory_mb: r for r in lm.rows([free], peak_rss_mb=900.0)}
    # Then duration stretches below 1769 MB and GB-s stay equal there
    assert by_size[1024].duration_ms == pytest.approx(500.0 * 1769 / 1024)
    assert by_size[1024].gb_s == pytest.approx(by_size[1769].gb_s)
    assert by_size[2048].duration_ms == pytest.approx(500.0)
    assert by_size[2048].gb_s > by_size[1769].gb_s
    # And the dollar figure is GB-s x the per-GB-s price + the per-request price
    assert by_size[1769].usd_per_1m == pytest.approx(
        by_size[1769].gb_s * lm.USD_PER_GB_S * 1e6 + lm.USD_PER_1M_REQUESTS
    )


def test_two_threads_use_at_most_the_parallelism_they_reached() -> None:
    """Two threads that reached 1.6 CPUs unthrottled cannot use the 2 vCPUs of 3538 MB fully."""
    free = lm.Sample(memory_mb=None, threads=2, wall_ms=400.0, cpu_ms=640.0)
    assert lm.estimate(free, 3538) == pytest.approx(400.0)
    assert lm.estimate(free, 1769) == pytest.approx(640.0)


def test_the_pick_is_the_smallest_size_at_the_lowest_cost_that_fits_peak_rss() -> None:
    # Given a request whose cost is flat up to 1769 MB and a 1,000 MB peak RSS
    free = lm.Sample(memory_mb=None, threads=1, wall_ms=500.0, cpu_ms=500.0)
    table = lm.rows([free], peak_rss_mb=1000.0)
    # When the cheapest is picked
    pick = lm.cheapest(table)
    # Then 1024 MB is out (no room above peak RSS) and 1280 MB, tied on cost, is the smallest
    assert not next(r for r in table if r.memory_mb == 1024).fits
    assert (pick.memory_mb, pick.threads) == (1280, 1)
