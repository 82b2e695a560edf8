"""The synth contexts the security scans cover: the shipped models, and every optional cdk
context key set at once (fake values, with the VPC lookup answered as cdk.context.json would)."""

from __future__ import annotations

from typing import Any

DEFAULT: dict[str, Any] = {}
GATED_CHAT: dict[str, Any] = {"model": "llama-3.1-8b-instruct"}
MULTI_GPU: dict[str, Any] = {"model": "qwen2.5-32b-instruct"}
ALL_OPTIONAL_KEYS: dict[str, Any] = {
    "account": "123456789012",
    "region": "eu-west-1",
    "model": "llama-3.1-8b-instruct",
    "project": "acme-twin",
    "qdrant_url": "https://qdrant.example.com:6333",
    "qdrant_api_key_secret_name": "acme/qdrant-api-key",
    "api_rate_limit_rps": "5",
    "api_burst_limit": "9",
    "api_quota_per_day": "1000",
    "cors_origins": "https://app.example.com,https://admin.example.com",
    "alarm_email": "oncall@example.com",
    "opik_workspace": "acme",
    "opik_project_name": "acme-twin",
    "opik_api_key_secret_name": "acme/opik-api-key",
    "trace_sample_rate": "0.25",
    "trace_redaction": "hash_query",
    "lambda_reserved_concurrency": "3",
    "vpc_id": "vpc-0123456789abcdef0",
    "vpc_endpoints": "true",
    "api_gateway_account_role": "true",
    "monthly_budget_usd": "250",
    "idle_alarm_minutes": "45",
    "idle_scale_to_zero": "true",
    "embedding_model_dir": "/nonexistent/embedding",
    "reranker_model_dir": "/nonexistent/reranker",
    "lambda_architecture": "arm64",
    "snapstart": "true",
}


# The vpc-provider answer `cdk synth` caches in cdk.context.json for vpc_id (shape: the cloud
# assembly's VpcContextResponse). Without it CDK synthesizes a dummy VPC whose ids ("p-12345")
# CloudFormation's validation rejects, an error under @aws-cdk/core:validateAgainstDefaultRules.
VPC_LOOKUP: dict[str, Any] = {
    "vpc-provider:account={account}:filter.vpc-id={vpc_id}:region={region}:returnAsymmetricSubnets=true".format(
        **ALL_OPTIONAL_KEYS
    ): {
        "vpcId": ALL_OPTIONAL_KEYS["vpc_id"],
        "vpcCidrBlock": "10.0.0.0/16",
        "ownerAccountId": ALL_OPTIONAL_KEYS["account"],
        "availabilityZones": [],
        "subnetGroups": [
            {
                "name": kind,
                "type": kind,
                "subnets": [
                    {
                        "subnetId": f"subnet-0{digit}a{digit * 15}",
                        "availabilityZone": "eu-west-1a",
                        "routeTableId": f"rtb-0{digit}a{digit * 15}",
                    },
                    {
                        "subnetId": f"subnet-0{digit}b{digit * 15}",
                        "availabilityZone": "eu-west-1b",
                        "routeTableId": f"rtb-0{digit}b{digit * 15}",
                    },
                ],
            }
            for kind, digit in (("Public", "1"), ("Private", "2"))
        ],
    }
}
SCANNED: dict[str, dict[str, Any]] = {
    "default": DEFAULT,
    "gated-chat": GATED_CHAT,
    "multi-gpu": MULTI_GPU,
    "all-optional-keys": {**ALL_OPTIONAL_KEYS, **VPC_LOOKUP},
}
