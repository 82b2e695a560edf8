"""The API key authorizer's decisions, from API Gateway's documented Lambda authorizer contract.

Input of a REQUEST authorizer: `headers` as the client sent them and `methodArn`
(https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-lambda-authorizer-input.html).
Output: `principalId`, `policyDocument` allowing or denying `execute-api:Invoke`, and, with the
API key source AUTHORIZER, `usageIdentifierKey` = the API key of a usage plan
(https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-lambda-authorizer-output.html,
https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-api-key-source.html).
"""

from __future__ import annotations

from typing import Any

import pytest

from authorizer import handler
from authorizer.handler import decide, presented_key

KEY = "k" * 40
METHOD_ARN = "arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/v1/POST/chat/completions"


def event(**headers: str) -> dict[str, Any]:
    return {"type": "REQUEST", "methodArn": METHOD_ARN, "headers": headers}


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {KEY}"},  # what OpenAI clients send
        {"authorization": f"bearer {KEY}"},
        {"x-api-key": KEY},
        {"X-Api-Key": KEY},
    ],
)
def test_either_header_is_allowed_and_returned_as_the_usage_plan_key(
    headers: dict[str, str],
) -> None:
    decision = decide(event(**headers), KEY)
    (statement,) = decision["policyDocument"]["Statement"]
    assert statement["Effect"] == "Allow" and statement["Action"] == "execute-api:Invoke"
    assert decision["usageIdentifierKey"] == KEY
    # The decision is about the key, so it covers every route of the stage
    assert statement["Resource"] == "arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/v1/*"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer "},
    ],
)
def test_a_missing_or_wrong_key_is_denied_without_a_usage_key(headers: dict[str, str]) -> None:
    decision = decide(event(**headers), KEY)
    assert decision["policyDocument"]["Statement"][0]["Effect"] == "Deny"
    assert "usageIdentifierKey" not in decision


def test_bearer_wins_over_x_api_key() -> None:
    assert presented_key({"Authorization": "Bearer a", "x-api-key": "b"}) == "a"


class FakeSecrets:
    def __init__(self) -> None:
        self.calls = 0

    def get_secret_value(self, SecretId: str) -> dict[str, str]:
        self.calls += 1
        assert SecretId == "arn:secret"
        return {"SecretString": KEY}


def test_the_key_is_read_once_then_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(handler.SECRET_ENV, "arn:secret")
    monkeypatch.setattr(handler, "_cached", None)
    secrets = FakeSecrets()
    assert handler._api_key(secrets) == KEY
    assert handler._api_key(secrets) == KEY
    assert secrets.calls == 1
