"""No secret value in any template or Lambda environment; no IAM wildcard where it matters.

Secrets live in Secrets Manager and are referenced by name, ARN or `{{resolve:...}}` (DESIGN 4):
the scanner below fails on anything that looks like the value itself.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stacks.config import DeploymentConfig
from tests.infrastructure.helpers import as_list
from tests.infrastructure.scanned_contexts import ALL_OPTIONAL_KEYS, SCANNED

# Values that are secrets wherever they appear.
TOKEN_PATTERNS = {
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "OpenAI-style API key": re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),
}
# Property and environment variable names whose plain-string value must be a reference.
SENSITIVE_NAME = re.compile(r"key|token|secret|passw|credential", re.IGNORECASE)
# Template properties named like that whose value is not a secret by definition.
NOT_SECRET_PROPERTIES = {
    "S3Key": "an asset's object key: the sha256 of its content",
    "Key": "a tag's (or mapping's) name",
    "ApiKeySourceType": "where API Gateway reads the key from (HEADER)",
    "ApiKeyRequired": "a boolean",
    "KeyId": "a reference to the API key resource",
}
REFERENCE = re.compile(r"^(\{\{resolve:(secretsmanager|ssm|ssm-secure):[^}]+\}\}|arn:[\w-]+:.+)$")
# A name (`llm-twin/hf-token`) or an enum value (`API_KEY`): words joined by / - _ .
NAME_LIKE = re.compile(r"^[a-z0-9]+(?:[/_.-][a-z0-9]+)*$", re.IGNORECASE)
MIN_ENTROPY_BITS = 3.0
MIN_RANDOM_LEN = 16


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def looks_random(text: str) -> bool:
    """A long run of characters with high per-character entropy and digits or mixed case."""
    for segment in re.split(r"[/_.:-]", text):
        mixed = re.search(r"\d", segment) or (segment.lower() != segment != segment.upper())
        if len(segment) >= MIN_RANDOM_LEN and mixed and _entropy(segment) >= MIN_ENTROPY_BITS:
            return True
    return False


def _is_intrinsic(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) == 1
        and next(iter(value)).startswith(("Ref", "Fn::"))
    )


def _json_or_none(text: str) -> Any:
    """A JSON object or array held in a string (e.g. the MODEL_PROFILE env var), else None."""
    if not text.startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _strings(node: Any, path: str, name: str) -> Iterator[tuple[str, str, str]]:
    """(path, nearest property name, string) for every string leaf; JSON strings are opened."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}", name if _is_intrinsic(node) else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{path}[{i}]", name)
    elif isinstance(node, str):
        yield path, name, node
        parsed = _json_or_none(node)
        if parsed is not None:
            yield from _strings(parsed, f"{path}<json>", name)


def _named_values(node: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """(path, name, value) for every mapping entry, plus `{Name/Key: n, Value: v}` pairs."""
    if isinstance(node, dict):
        pair_name = node.get("Name", node.get("Key"))
        if isinstance(pair_name, str) and "Value" in node:
            yield f"{path}.Value", pair_name, node["Value"]
        for key, value in node.items():
            if not _is_intrinsic(node):
                yield f"{path}.{key}", key, value
            yield from _named_values(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _named_values(value, f"{path}[{i}]")
    elif isinstance(node, str) and (parsed := _json_or_none(node)) is not None:
        yield from _named_values(parsed, f"{path}<json>")


def secret_findings(template: dict[str, Any]) -> list[str]:
    findings = []
    for path, _, text in _strings(template, "", ""):
        for kind, pattern in TOKEN_PATTERNS.items():
            if pattern.search(text):
                findings.append(f"{path}: looks like a {kind}")
    for path, name, value in _named_values(template, ""):
        if not SENSITIVE_NAME.search(name) or name in NOT_SECRET_PROPERTIES:
            continue
        if not isinstance(value, str) or REFERENCE.match(value):
            continue  # intrinsics (Ref/GetAtt/Join), numbers, booleans, nested properties
        if not NAME_LIKE.match(value) or looks_random(value):
            findings.append(f"{path}: {name} holds a literal value, not a reference or a name")
    return findings


def lambda_environments(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        logical_id: r["Properties"].get("Environment", {}).get("Variables", {})
        for logical_id, r in template["Resources"].items()
        if r["Type"] == "AWS::Lambda::Function"
    }


def _policy_statements(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every statement of every policy document anywhere in a template (identity, resource, key)."""
    if isinstance(node, dict):
        if isinstance(node.get("Statement"), list):
            for i, statement in enumerate(node["Statement"]):
                yield f"{path}.Statement[{i}]", statement
        for key, value in node.items():
            yield from _policy_statements(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _policy_statements(value, f"{path}[{i}]")


GUARDED_SERVICES = ("sagemaker", "secretsmanager", "sqs")


def wildcard_findings(template: dict[str, Any]) -> list[str]:
    findings = []
    for path, statement in _policy_statements(template):
        if statement.get("Effect") != "Allow":
            continue  # a Deny on `*` (e.g. enforce_ssl's) only narrows
        if "NotAction" in statement or "NotResource" in statement:
            findings.append(f"{path}: Allow with NotAction/NotResource grants by exclusion")
        actions = [a for a in as_list(statement.get("Action", [])) if isinstance(a, str)]
        resources = as_list(statement.get("Resource", []))
        if "*" in actions:
            findings.append(f"{path}: Action '*'")
        for action in actions:
            service, _, verb = action.partition(":")
            if service.lower() not in GUARDED_SERVICES:
                continue
            if "*" in resources:
                findings.append(f"{path}: {action} on Resource '*'")
            if verb == "*":
                findings.append(f"{path}: every {service} action ({action})")
    return findings


@pytest.fixture(scope="module", params=list(SCANNED), ids=list(SCANNED))
def templates(
    request: pytest.FixtureRequest, synth: Callable[..., dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    return synth(**SCANNED[request.param])


def test_the_all_keys_context_sets_every_deployment_key() -> None:
    assert set(ALL_OPTIONAL_KEYS) >= set(DeploymentConfig.model_fields)


def test_no_template_holds_a_secret_value(templates: dict[str, dict[str, Any]]) -> None:
    for stack, template in templates.items():
        assert not secret_findings(template), (stack, secret_findings(template))


def test_lambda_environments_hold_secret_names_never_values(
    templates: dict[str, dict[str, Any]],
) -> None:
    environments = lambda_environments(templates["api"])
    assert environments  # the forwarder too when Opik is configured
    for function, variables in environments.items():
        assert not secret_findings({"Variables": variables}), function
        for name, value in variables.items():
            if name.endswith("_SECRET"):  # QDRANT_API_KEY_SECRET, OPIK_API_KEY_SECRET
                # a built ARN, or a literal one where the region (hence the partition) is known
                reference = _is_intrinsic(value) or REFERENCE.match(value)
                assert reference or NAME_LIKE.match(value), (function, name, value)


def test_no_iam_wildcards_on_guarded_services(templates: dict[str, dict[str, Any]]) -> None:
    for stack, template in templates.items():
        statements = list(_policy_statements(template))
        assert statements, stack
        assert not wildcard_findings(template), (stack, wildcard_findings(template))


# The scanners catch what they are for.


def _with_lambda_env(template: dict[str, Any], **variables: str) -> dict[str, Any]:
    planted: dict[str, Any] = json.loads(json.dumps(template))
    function = next(
        r for r in planted["Resources"].values() if r["Type"] == "AWS::Lambda::Function"
    )
    function["Properties"]["Environment"]["Variables"].update(variables)
    return planted


FAKE_HF = "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ012345"
FAKE_AKID = "AKIA" + "IOSFODNN7EXAMPLE"


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"HF_TOKEN": FAKE_HF}, "Hugging Face token"),
        ({"SOME_SETTING": f"prefix {FAKE_HF} suffix"}, "Hugging Face token"),
        ({"AWS_ACCESS_KEY_ID": FAKE_AKID}, "AWS access key id"),
        ({"QDRANT_API_KEY": "x9Qz4LmW7pR2tV8sK3nB6yH1"}, "QDRANT_API_KEY holds a literal value"),
        ({"DB_PASSWORD": "Tr0ub4dor&3-correct-Horse"}, "DB_PASSWORD holds a literal value"),
        ({"MODEL_PROFILE": json.dumps({"api_token": "Zx81Kq02Lm93Np74Ob65"})}, "api_token"),
    ],
    ids=["hf-token", "hf-token-inside-text", "aws-key", "api-key", "password", "inside-json"],
)
def test_scanner_catches_a_planted_secret(
    synth: Callable[..., dict[str, dict[str, Any]]], variables: dict[str, str], expected: str
) -> None:
    planted = _with_lambda_env(synth()["api"], **variables)
    assert any(expected in f for f in secret_findings(planted)), secret_findings(planted)


@pytest.mark.parametrize(
    "value",
    [
        "llm-twin/hf-token",
        "{{resolve:secretsmanager:llm-twin/hf-token:SecretString:::}}",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:acme/opik-api-key",
        {"Ref": "QdrantApiKey"},
    ],
    ids=["secret-name", "dynamic-reference", "arn", "ref"],
)
def test_scanner_accepts_references(
    synth: Callable[..., dict[str, dict[str, Any]]], value: str | dict[str, str]
) -> None:
    planted = json.loads(json.dumps(synth()["api"]))
    function = next(
        r for r in planted["Resources"].values() if r["Type"] == "AWS::Lambda::Function"
    )
    function["Properties"]["Environment"]["Variables"]["HF_TOKEN"] = value
    assert not secret_findings(planted)


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ({"Effect": "Allow", "Action": "*", "Resource": "arn:aws:s3:::b"}, "Action '*'"),
        ({"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*"}, "on Resource '*'"),
        (
            {
                "Effect": "Allow",
                "Action": ["logs:PutLogEvents", "sagemaker:InvokeEndpoint"],
                "Resource": ["*"],
            },
            "sagemaker:InvokeEndpoint on Resource '*'",
        ),
        (
            {
                "Effect": "Allow",
                "Action": "secretsmanager:*",
                "Resource": "arn:aws:secretsmanager:::x",
            },
            "every secretsmanager action",
        ),
        ({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}, "NotAction"),
    ],
    ids=["action-star", "sqs-on-star", "sagemaker-on-star", "service-wide", "not-action"],
)
def test_wildcard_check_catches_a_planted_statement(
    statement: dict[str, str], expected: str
) -> None:
    template = {
        "Resources": {
            "P": {
                "Type": "AWS::IAM::Policy",
                "Properties": {"PolicyDocument": {"Statement": [statement]}},
            }
        }
    }
    assert any(expected in f for f in wildcard_findings(template)), wildcard_findings(template)
