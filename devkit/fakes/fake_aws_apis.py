"""AWS APIs moto does not implement, served to a real boto3 client in their wire shape.

moto 5.2 has no Service Quotas `ListServiceQuotas` (only VPC defaults) and no SageMaker
inference components. `serve_operation` answers one operation of a real boto3 client from a
handler that receives the JSON request body the client serialized (both services speak JSON),
and validates each answer against botocore's output shape for that operation, so a fake that
drifts from the real API fails the test. Every other operation still goes to moto.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.validate import validate_parameters

Handler = Callable[[dict[str, Any]], dict[str, Any] | None]
"""Request body -> response dict, or None to let the call through (to moto)."""


def serve_operation(client: Any, operation: str, handler: Handler) -> None:
    op_model = client.meta.service_model.operation_model(operation)
    service = client.meta.service_model.service_id.hyphenize()

    def before_call(
        model: Any, params: dict[str, Any], **_: Any
    ) -> tuple[AWSResponse, dict[str, Any]] | None:
        body = params.get("body") or b"{}"
        response = handler(json.loads(body))
        if response is None:
            return None
        if "Error" in response:
            return AWSResponse(params["url"], 400, HTTPHeaders(), None), response
        validate_parameters(response, op_model.output_shape)
        return AWSResponse(params["url"], 200, HTTPHeaders(), None), response

    client.meta.events.register(f"before-call.{service}.{operation}", before_call)


def _page(items: list[dict[str, Any]], key: str, body: dict[str, Any], size: int) -> dict[str, Any]:
    start = int(body.get("NextToken") or 0)
    page: dict[str, Any] = {key: items[start : start + size]}
    if start + size < len(items):
        page["NextToken"] = str(start + size)
    return page


@dataclass(frozen=True)
class FakeQuota:
    name: str
    code: str  # made-up codes: the real ones are looked up, never hard-coded
    value: float
    applied: bool = False
    """Whether ListServiceQuotas returns it; AWS lists only quotas with an applied value there."""


@dataclass
class FakeServiceQuotas:
    quotas: list[FakeQuota]
    region: str = "us-east-1"
    account: str = "123456789012"
    page_size: int = 2  # small pages so the paginator is exercised
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def attach(self, client: Any) -> Any:
        serve_operation(
            client, "ListServiceQuotas", lambda b: self._list("ListServiceQuotas", b, applied=True)
        )
        serve_operation(
            client,
            "ListAWSDefaultServiceQuotas",
            lambda b: self._list("ListAWSDefaultServiceQuotas", b, applied=False),
        )
        return client

    def _shape(self, quota: FakeQuota) -> dict[str, Any]:
        return {
            "ServiceCode": "sagemaker",
            "ServiceName": "Amazon SageMaker",
            "QuotaArn": f"arn:aws:servicequotas:{self.region}:{self.account}:sagemaker/{quota.code}",
            "QuotaCode": quota.code,
            "QuotaName": quota.name,
            "Value": quota.value,
            "Unit": "None",
            "Adjustable": True,
            "GlobalQuota": False,
            "QuotaAppliedAtLevel": "ACCOUNT",
        }

    def _list(self, operation: str, body: dict[str, Any], *, applied: bool) -> dict[str, Any]:
        self.requests.append((operation, body))
        if body.get("ServiceCode") != "sagemaker":
            return {"Error": {"Code": "NoSuchResourceException", "Message": "unknown service"}}
        items = [self._shape(q) for q in self.quotas if q.applied or not applied]
        return _page(items, "Quotas", body, self.page_size)


@dataclass
class FakeInferenceComponents:
    """ListInferenceComponents and ListTags for inference component ARNs (other ARNs go to moto)."""

    region: str = "us-east-1"
    account: str = "123456789012"
    components: dict[str, dict[str, str]] = field(default_factory=dict)
    """name -> tags"""

    def add(self, name: str, tags: dict[str, str] | None = None) -> None:
        self.components[name] = tags or {}

    def arn(self, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:inference-component/{name}"

    def attach(self, client: Any) -> Any:
        serve_operation(client, "ListInferenceComponents", self._list)
        serve_operation(client, "ListTags", self._tags)
        return client

    def _list(self, body: dict[str, Any]) -> dict[str, Any]:
        now = datetime.now(UTC)
        items = [
            {
                "CreationTime": now,
                "InferenceComponentArn": self.arn(name),
                "InferenceComponentName": name,
                "EndpointArn": f"arn:aws:sagemaker:{self.region}:{self.account}:endpoint/{name}-endpoint",
                "EndpointName": f"{name}-endpoint",
                "VariantName": "AllTraffic",
                "InferenceComponentStatus": "InService",
                "LastModifiedTime": now,
            }
            for name in sorted(self.components)
            if body.get("NameContains", "") in name
        ]
        return _page(items, "InferenceComponents", body, int(body.get("MaxResults") or 10))

    def _tags(self, body: dict[str, Any]) -> dict[str, Any] | None:
        arn = body["ResourceArn"]
        if ":inference-component/" not in arn:
            return None
        tags = self.components.get(arn.rsplit("/", 1)[1], {})
        return {"Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
