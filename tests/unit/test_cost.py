"""`tools.cost`: the estimate from tools/prices.json for the shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stacks.config import load_model_config
from stacks.instances import GPU_INSTANCES
from tools import cost
from tools.cost import HOURS_PER_MONTH, estimate, load_prices, render

PRICES = load_prices()


def test_price_table_has_date_source_and_only_known_instances() -> None:
    assert PRICES["as_of"] and PRICES["source"]
    for region, table in PRICES["regions"].items():
        unknown = set(table) - set(GPU_INSTANCES)
        assert not unknown, f"{region}: {unknown} are not in stacks/instances.py"
        assert all(price > 0 for price in table.values())


def test_default_config_costs_one_instance_always_on() -> None:
    # Given the default config (always_on, 1 copy of ml.g5.2xlarge at $1.515/h)
    text = render(load_model_config("twin-llama-3.1-8b"), PRICES, "us-east-1", 8)

    # Then it states an hourly and a 730-hour monthly figure and calls itself an estimate with its date
    assert "ml.g5.2xlarge: $1.515/h per instance" in text
    assert "at min scale (1 instance(s)): $1.515/h, $1,106/month (730 h)" in text
    assert "This is an estimate" in text and f"as of {PRICES['as_of']}, region us-east-1" in text
    # and what scale-to-zero would save at 8 busy hours a day plus the 15 minutes target
    # tracking waits below target before scaling in
    monthly_stz = 1.515 * 8.25 * HOURS_PER_MONTH / 24
    assert (
        f"${monthly_stz:,.0f}/month, would save ${1.515 * 730 - monthly_stz:,.0f}/month (66%)"
        in text
    )


def test_multi_copy_config_prices_min_and_max_scale() -> None:
    # Qwen: 1..2 copies, each on its own ml.g5.12xlarge ($7.09/h)
    est = estimate(load_model_config("qwen2.5-32b-instruct"), 7.09, 8)
    assert (est.instances_min, est.instances_max) == (1, 2)
    assert (est.min_hourly, est.max_hourly) == (7.09, 14.18)


def test_scale_to_zero_config_costs_nothing_idle_and_its_busy_hours() -> None:
    text = render(load_model_config("llama-3.1-8b-instruct"), PRICES, "us-east-1", 8)
    assert "at min scale (0 instance(s)): $0.000/h" in text
    assert "$0/h while scaled to zero" in text


def test_missing_price_says_so_instead_of_guessing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a region with no prices in the table
    text = render(load_model_config("twin-llama-3.1-8b"), PRICES, "eu-west-1", 8)

    # Then it names what is missing and prints no figure
    assert "no price for ml.g5.2xlarge in eu-west-1" in text
    assert "/month" not in text


def test_cli_prints_the_default_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cost.main(["--region", "us-east-1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Estimated cost of twin-llama-3.1-8b")
    assert "pay-per-use, not included above" in out
    assert (
        json.loads(cost.PRICES_FILE.read_text())["regions"]["us-east-1"]["ml.g5.2xlarge"] == 1.515
    )
