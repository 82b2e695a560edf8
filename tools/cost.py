"""Estimated cost of a model config (`make cost`): the GPU dominates, so that is what it prices.

`python -m tools.cost [--model NAME] [--region REGION] [--busy-hours-per-day 8]` prints the
hourly and monthly (730 h) instance cost at min and at max scale from `tools/prices.json`, and
what scale-to-zero saves (always_on) or costs (scale_to_zero) at the given daily busy hours.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stacks.config import ConfigError, ModelConfig
from tools.preflight import copies_per_instance, load_configs

PRICES_FILE = Path(__file__).resolve().parent / "prices.json"
HOURS_PER_MONTH = 730  # AWS's billing convention (8760 h / 12)
HOURS_PER_DAY = 24
DEFAULT_BUSY_HOURS_PER_DAY = 8.0
PRICING_PAGE = "https://aws.amazon.com/sagemaker/pricing/"


def load_prices(path: Path = PRICES_FILE) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def hourly_price(prices: dict[str, Any], region: str, instance_type: str) -> float | None:
    value = prices.get("regions", {}).get(region, {}).get(instance_type)
    return float(value) if value is not None else None


@dataclass(frozen=True)
class Estimate:
    price_per_hour: float
    instances_min: int
    instances_max: int
    billed_hours_per_day: float
    """Hours a day one instance runs when it scales to zero outside `busy` hours."""

    @property
    def min_hourly(self) -> float:
        return self.price_per_hour * self.instances_min

    @property
    def max_hourly(self) -> float:
        return self.price_per_hour * self.instances_max

    @property
    def scale_to_zero_monthly(self) -> float:
        return self.price_per_hour * self.billed_hours_per_day * HOURS_PER_MONTH / HOURS_PER_DAY


# Target tracking scales in once its AWS-managed low alarm has seen 15 one-minute datapoints
# below target (Application Auto Scaling User Guide, "target tracking scaling policies"): the
# instance stays billed that long after the last request.
SCALE_IN_IDLE_MINUTES = 15


def estimate(config: ModelConfig, price_per_hour: float, busy_hours_per_day: float) -> Estimate:
    per_instance = copies_per_instance(config)
    # After the last request the instance stays up for the scale-in idle time before going to zero.
    idle_tail_h = SCALE_IN_IDLE_MINUTES / 60
    return Estimate(
        price_per_hour=price_per_hour,
        instances_min=math.ceil(config.scaling.effective_min_copies / per_instance),
        instances_max=math.ceil(config.scaling.max_copies / per_instance),
        billed_hours_per_day=min(
            HOURS_PER_DAY, busy_hours_per_day + idle_tail_h if busy_hours_per_day else 0
        ),
    )


def _usd(amount: float) -> str:
    return f"${amount:,.0f}" if amount >= 100 else f"${amount:,.2f}"


def _rate(amount: float) -> str:
    return f"${amount:,.3f}"


def render(
    config: ModelConfig, prices: dict[str, Any], region: str, busy_hours_per_day: float
) -> str:
    lines = [
        f"Estimated cost of {config.name} ({config.hf_model_id}) on {config.instance_type} in {region}, "
        f"scaling {config.scaling.mode} {config.scaling.effective_min_copies}..{config.scaling.max_copies} copies",
        f"  This is an estimate: on-demand SageMaker real-time inference prices from tools/prices.json "
        f"(as of {prices.get('as_of', '?')}, region {region}); check {PRICING_PAGE}.",
    ]
    price = hourly_price(prices, region, config.instance_type)
    if price is None:
        known = ", ".join(sorted(prices.get("regions", {}))) or "none"
        lines.append(
            f"  no price for {config.instance_type} in {region} in tools/prices.json (regions priced: {known}); "
            f"look it up at {PRICING_PAGE}"
        )
        return "\n".join(lines)
    est = estimate(config, price, busy_hours_per_day)
    lines += [
        f"  {config.instance_type}: {_rate(price)}/h per instance, {copies_per_instance(config)} copy per instance",
        f"  at min scale ({est.instances_min} instance(s)): {_rate(est.min_hourly)}/h, "
        f"{_usd(est.min_hourly * HOURS_PER_MONTH)}/month ({HOURS_PER_MONTH} h)",
        f"  at max scale ({est.instances_max} instance(s)): {_rate(est.max_hourly)}/h, "
        f"{_usd(est.max_hourly * HOURS_PER_MONTH)}/month while at max",
    ]
    usage = (
        f"{busy_hours_per_day:g} busy h/day (+{SCALE_IN_IDLE_MINUTES} min idle before scale-in "
        f"= {est.billed_hours_per_day:g} billed h/day, 1 instance)"
    )
    stz = est.scale_to_zero_monthly
    if config.scaling.mode == "always_on":
        always = est.min_hourly * HOURS_PER_MONTH
        saving = always - stz
        lines.append(
            f"  scale_to_zero at {usage}: {_usd(stz)}/month, would save {_usd(saving)}/month "
            f"({saving / always:.0%}); cold starts take minutes (set scaling.mode: scale_to_zero)"
        )
    else:
        lines.append(f"  at {usage}: {_usd(stz)}/month; $0/h while scaled to zero")
    lines.append("  pay-per-use, not included above:")
    for item in prices.get("pay_per_use", []):
        lines.append(f"    {item['service']}: {item['price'] or item['source']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.cost", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", help="model_config/<name>.yaml (default: the cdk.json context)")
    parser.add_argument(
        "--region",
        default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    )
    parser.add_argument("--busy-hours-per-day", type=float, default=DEFAULT_BUSY_HOURS_PER_DAY)
    args = parser.parse_args(argv)
    if not 0 <= args.busy_hours_per_day <= HOURS_PER_DAY:
        parser.error("--busy-hours-per-day must be between 0 and 24")
    try:
        config, _ = load_configs(args.model)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 1
    print(render(config, load_prices(), args.region, args.busy_hours_per_day))
    return 0


if __name__ == "__main__":
    sys.exit(main())
