"""The AWS Lambda Web Adapter layer: how the business app (one ASGI app, `web.main`) runs in
Lambda and streams through API Gateway (DESIGN 4). AWS publishes the layer in its own account,
one name per architecture; the versions are pinned here and nowhere else.
(https://awslabs.github.io/aws-lambda-web-adapter/ ; aws-samples/serverless-samples
`apigw-response-streaming/python-strands-lambda/template.yaml`.) Version 30 of both layers is
the adapter 1.1+, which bridges Lambda SnapStart's hooks to the app (aws/aws-lambda-web-adapter
`examples/fastapi-snapstart-zip/README.md`).
"""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from web.snapstart import HOOK_PATHS

PUBLISHER_ACCOUNT = "753240598075"
LAYERS: dict[str, tuple[str, int]] = {
    lambda_.Architecture.X86_64.name: ("LambdaAdapterLayerX86", 30),
    lambda_.Architecture.ARM_64.name: ("LambdaAdapterLayerArm64", 30),
}
"""Architecture name -> (layer name, version)."""
APP_PORT = 8000
READINESS_PATH = "/health"
"""The adapter polls this until the app answers, during the Lambda's init phase."""
HANDLER = "web/run.sh"
"""With AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap the adapter runs this script as the handler."""


def layer_arn(region: str, architecture: lambda_.Architecture) -> str:
    name, version = LAYERS[architecture.name]
    return f"arn:aws:lambda:{region}:{PUBLISHER_ACCOUNT}:layer:{name}:{version}"


def environment(*, snapstart: bool) -> dict[str, str]:
    """The adapter's settings: stream the response, start the app on APP_PORT, wait for /health;
    with SnapStart, the paths the adapter POSTs to around the snapshot (web.snapstart)."""
    return {
        "AWS_LAMBDA_EXEC_WRAPPER": "/opt/bootstrap",
        "AWS_LWA_INVOKE_MODE": "response_stream",
        "AWS_LWA_PORT": str(APP_PORT),
        "AWS_LWA_READINESS_CHECK_PATH": READINESS_PATH,
        **(HOOK_PATHS if snapstart else {}),
    }


def layer(scope: Construct, architecture: lambda_.Architecture) -> lambda_.ILayerVersion:
    region = Stack.of(scope).region  # a token in environment-agnostic stacks: resolved at deploy
    return lambda_.LayerVersion.from_layer_version_arn(
        scope, "WebAdapter", layer_arn(region, architecture)
    )
