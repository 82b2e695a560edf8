"""The REST API's Lambda authorizer (REQUEST type) and its API key source.

The API's `apiKeySource` is AUTHORIZER: API Gateway takes the API key from this function's
`usageIdentifierKey` instead of the `x-api-key` header, then applies the usage plan (throttling,
quota) to it as before ("Choose an API key source in API Gateway",
https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-api-key-source.html;
output format: .../api-gateway-lambda-authorizer-output.html). So a client may send the key
either way: `Authorization: Bearer <key>` (what OpenAI clients send) or `x-api-key: <key>`.

The only key it knows is the API's own, whose value lives in a Secrets Manager secret the stack
generates (the API key is created from that value); it reads that one secret, caches it for
KEY_CACHE_S, and compares in constant time. A wrong or missing key gets a Deny policy, which API
Gateway answers with 403 like a wrong `x-api-key` before.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Mapping
from typing import Any

KEY_CACHE_S = 300.0
"""A rotated key is accepted at most this long after it changed (API Gateway cannot cache the
result: its cache needs every identity source present, and a caller sends only one of the two
headers; https://docs.aws.amazon.com/apigateway/latest/api/API_CreateAuthorizer.html)."""
SECRET_ENV = "API_KEY_SECRET_ARN"  # noqa: S105 - the name of the variable holding the ARN
BEARER = "bearer "

_cached: tuple[float, str] | None = None


def presented_key(headers: Mapping[str, str] | None) -> str | None:
    """The key from `Authorization: Bearer <key>`, else from `x-api-key` (header names are
    case-insensitive; API Gateway passes them as the client wrote them)."""
    lowered = {name.lower(): value for name, value in (headers or {}).items()}
    authorization = lowered.get("authorization", "")
    if authorization[: len(BEARER)].lower() == BEARER and authorization[len(BEARER) :].strip():
        return authorization[len(BEARER) :].strip()
    return lowered.get("x-api-key") or None


def is_valid(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _api_key(client: Any = None) -> str:
    global _cached
    now = time.monotonic()
    if _cached is None or now - _cached[0] > KEY_CACHE_S:
        if client is None:
            import boto3  # the Lambda runtime's; imported here so tests of the rest need none

            client = boto3.client("secretsmanager")
        value = client.get_secret_value(SecretId=os.environ[SECRET_ENV])["SecretString"]
        _cached = (now, value)
    return _cached[1]


def _stage_arn(method_arn: str) -> str:
    """`arn:aws:execute-api:region:account:api/stage/METHOD/path` -> every method and path of
    that stage: the decision is about the key, not the route."""
    api_and_stage = method_arn.split("/", 2)[:2]
    return "/".join([*api_and_stage, "*"])


def decide(event: Mapping[str, Any], expected: str) -> dict[str, Any]:
    given = presented_key(event.get("headers"))
    allowed = is_valid(given, expected)
    response: dict[str, Any] = {
        "principalId": "api-key" if allowed else "anonymous",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Action": "execute-api:Invoke",
                    "Effect": "Allow" if allowed else "Deny",
                    "Resource": _stage_arn(event["methodArn"]),
                }
            ],
        },
    }
    if allowed:
        response["usageIdentifierKey"] = given
    return response


def lambda_handler(event: dict[str, Any], _context: Any) -> dict[str, Any]:
    return decide(event, _api_key())
