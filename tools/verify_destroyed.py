"""After `cdk destroy --all`: prove nothing billable or stray is left (`make destroy` runs it).

`python -m tools.verify_destroyed [--project NAME] [--region REGION]` lists, with boto3:
- SageMaker endpoints, endpoint configs, models and inference components named with the project
  prefix or tagged `project=<project>`;
- CloudWatch log groups under the SageMaker, Lambda, API Gateway and Step Functions roots named
  with the project prefix (or its CamelCase stack-name form);
- Secrets Manager secrets tagged `project=<project>` that are not already scheduled for deletion
  (secrets the user created by hand, such as the HF token, carry no such tag and are kept).
Each leftover is printed with the CLI command that deletes it; the exit code is 1 if any remain.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

PROJECT_TAG = "project"
LOG_GROUP_ROOTS = (
    "/aws/sagemaker/Endpoints/",
    "/aws/sagemaker/InferenceComponents/",
    "/aws/lambda/",
    "/aws/apigateway/",
    "/aws/vendedlogs/states/",
)


@dataclass(frozen=True)
class SageMakerKind:
    label: str
    list_op: str
    items_key: str
    name_key: str
    arn_key: str
    delete_cli: str
    name_flag: str


SAGEMAKER_KINDS = (
    # Inference components first: the endpoint cannot be deleted while they exist.
    SageMakerKind("inference component", "list_inference_components", "InferenceComponents",
                  "InferenceComponentName", "InferenceComponentArn", "delete-inference-component",
                  "--inference-component-name"),
    SageMakerKind("endpoint", "list_endpoints", "Endpoints", "EndpointName", "EndpointArn",
                  "delete-endpoint", "--endpoint-name"),
    SageMakerKind("endpoint config", "list_endpoint_configs", "EndpointConfigs", "EndpointConfigName",
                  "EndpointConfigArn", "delete-endpoint-config", "--endpoint-config-name"),
    SageMakerKind("model", "list_models", "Models", "ModelName", "ModelArn", "delete-model", "--model-name"),
)  # fmt: skip


@dataclass(frozen=True)
class Leftover:
    kind: str
    name: str
    command: str

    def line(self) -> str:
        return f"LEFT {self.kind} {self.name}: delete with `{self.command}`"


def name_prefixes(project: str) -> tuple[str, ...]:
    """`llm-twin` names resources `llm-twin-...`; its stacks are `LlmTwin...` (app_builder)."""
    camel = "".join(part.capitalize() for part in project.split("-"))
    return (f"{project}-", camel)


def _matches(name: str, prefixes: Sequence[str]) -> bool:
    return any(name.lower().startswith(p.lower()) for p in prefixes)


def _pages(client: Any, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    if client.can_paginate(operation):
        yield from client.get_paginator(operation).paginate(**kwargs)
    else:
        yield getattr(client, operation)(**kwargs)


def _tagged(tags: Sequence[dict[str, str]], project: str) -> bool:
    return any(t.get("Key") == PROJECT_TAG and t.get("Value") == project for t in tags)


def sagemaker_leftovers(client: Any, project: str, region: str) -> list[Leftover]:
    prefixes = name_prefixes(project)
    found = []
    for kind in SAGEMAKER_KINDS:
        for page in _pages(client, kind.list_op):
            for item in page.get(kind.items_key, []):
                name = item[kind.name_key]
                if _matches(name, prefixes) or _tagged(
                    client.list_tags(ResourceArn=item[kind.arn_key]).get("Tags", []), project
                ):
                    command = f"aws sagemaker {kind.delete_cli} {kind.name_flag} {shlex.quote(name)} --region {region}"
                    found.append(Leftover(kind.label, name, command))
    return found


def log_group_leftovers(client: Any, project: str, region: str) -> list[Leftover]:
    found = []
    for root in LOG_GROUP_ROOTS:
        for prefix in name_prefixes(project):
            for page in _pages(client, "describe_log_groups", logGroupNamePrefix=root + prefix):
                for group in page.get("logGroups", []):
                    name = group["logGroupName"]
                    command = f"aws logs delete-log-group --log-group-name {shlex.quote(name)} --region {region}"
                    found.append(Leftover("log group", name, command))
    return sorted(set(found), key=lambda leftover: leftover.name)


def secret_leftovers(client: Any, project: str, region: str) -> list[Leftover]:
    found = []
    filters = [
        {"Key": "tag-key", "Values": [PROJECT_TAG]},
        {"Key": "tag-value", "Values": [project]},
    ]
    for page in _pages(client, "list_secrets", Filters=filters):
        for secret in page.get("SecretList", []):
            # ListSecrets omits secrets scheduled for deletion unless asked; check anyway.
            if secret.get("DeletedDate") or not _tagged(secret.get("Tags", []), project):
                continue
            name = secret["Name"]
            command = (
                f"aws secretsmanager delete-secret --secret-id {shlex.quote(name)} "
                f"--recovery-window-in-days 7 --region {region}"
            )
            found.append(Leftover("secret", name, command))
    return found


def find_leftovers(session: boto3.Session, project: str) -> list[Leftover]:
    region = session.region_name or "us-east-1"
    return [
        *sagemaker_leftovers(session.client("sagemaker"), project, region),
        *log_group_leftovers(session.client("logs"), project, region),
        *secret_leftovers(session.client("secretsmanager"), project, region),
    ]


def report(leftovers: Sequence[Leftover], project: str, region: str, out: Any = sys.stdout) -> int:
    for leftover in leftovers:
        print(leftover.line(), file=out)
    if leftovers:
        print(
            f"verify-destroyed: {len(leftovers)} resource(s) of '{project}' remain in {region}",
            file=out,
        )
        return 1
    print(
        f"verify-destroyed: no endpoint, endpoint config, model, inference component, log group or "
        f"secret of '{project}' remains in {region}",
        file=out,
    )
    return 0


def main(argv: Sequence[str] | None = None, session: boto3.Session | None = None) -> int:
    from tools.preflight import load_cdk_context

    parser = argparse.ArgumentParser(
        prog="python -m tools.verify_destroyed", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--project", default=load_cdk_context().get("project", "llm-twin"))
    parser.add_argument("--region", default=None, help="default: the AWS session's region")
    args = parser.parse_args(argv)
    session = session or boto3.Session(region_name=args.region)
    if session.region_name is None:
        print(
            "cannot verify: no AWS region (set AWS_DEFAULT_REGION or pass --region: the one you deployed to)",
            file=sys.stderr,
        )
        return 2
    try:
        leftovers = find_leftovers(session, args.project)
    except (BotoCoreError, ClientError) as exc:
        print(f"cannot verify what remains: {exc}", file=sys.stderr)
        return 2
    return report(leftovers, args.project, session.region_name)


if __name__ == "__main__":
    sys.exit(main())
