"""Small readers over synthesized CloudFormation templates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def resources(template: Mapping[str, Any], type_name: str) -> list[dict[str, Any]]:
    return [r for r in template["Resources"].values() if r["Type"] == type_name]


def one(template: Mapping[str, Any], type_name: str) -> dict[str, Any]:
    found = resources(template, type_name)
    assert len(found) == 1, f"expected one {type_name}, found {len(found)}"
    properties: dict[str, Any] = found[0]["Properties"]
    return properties


def statements(template: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every IAM statement of every inline policy and role policy in the template."""
    out: list[dict[str, Any]] = []
    for res in template["Resources"].values():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::IAM::Policy":
            out.extend(props["PolicyDocument"]["Statement"])
        if res["Type"] == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                out.extend(policy["PolicyDocument"]["Statement"])
    return out


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
