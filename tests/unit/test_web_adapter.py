"""The Lambda Web Adapter layer table and the run script the adapter starts."""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

import pytest
from aws_cdk import aws_lambda as lambda_

from stacks import web_adapter
from stacks.bundling import LAMBDA_SRC
from web.snapstart import AFTER_RESTORE_ENV, BEFORE_SNAPSHOT_ENV, HOOK_PATHS

# Published by AWS (https://awslabs.github.io/aws-lambda-web-adapter/ "Lambda functions packaged
# as Zip package"; aws-samples/serverless-samples apigw-response-streaming/python-strands-lambda).
# Version 30 of each: aws/aws-lambda-web-adapter examples/fastapi-snapstart-zip/README.md, the
# adapter with SnapStart hooks, both architectures.
LAYER_ARN = re.compile(
    r"^arn:aws:lambda:[a-z0-9-]+:753240598075:layer:LambdaAdapterLayer(X86|Arm64):\d+$"
)


@pytest.mark.parametrize(
    ("architecture", "expected"),
    [
        (
            lambda_.Architecture.X86_64,
            "arn:aws:lambda:eu-west-1:753240598075:layer:LambdaAdapterLayerX86:30",
        ),
        (
            lambda_.Architecture.ARM_64,
            "arn:aws:lambda:eu-west-1:753240598075:layer:LambdaAdapterLayerArm64:30",
        ),
    ],
)
def test_each_architecture_gets_its_own_published_layer(
    architecture: lambda_.Architecture, expected: str
) -> None:
    arn = web_adapter.layer_arn("eu-west-1", architecture)
    assert arn == expected
    assert LAYER_ARN.match(arn)


def test_the_run_script_is_an_executable_that_starts_the_app_on_the_adapter_port() -> None:
    script = LAMBDA_SRC / web_adapter.HANDLER
    mode = script.stat().st_mode
    assert mode & stat.S_IXUSR and mode & stat.S_IXOTH  # Lambda runs it as another user
    text = script.read_text()
    assert text.startswith("#!/bin/bash\n")
    assert "exec python -m uvicorn web.main:app" in text
    assert '"${AWS_LWA_PORT}"' in text
    assert "LAMBDA_RUNTIME_DIR" in text  # boto3 is the runtime's, not bundled
    assert (LAMBDA_SRC / "web" / "main.py").is_file()


def test_the_run_script_serves_health_where_the_adapter_checks_readiness(tmp_path: Path) -> None:
    # As the adapter's bootstrap would: LAMBDA_TASK_ROOT is the bundle, AWS_LWA_PORT the port;
    # the readiness path answers 200 before any dependency exists (none are configured here).
    # With SnapStart's hook variables set, the app answers the adapter's POSTs at those paths: a
    # restore before anything was built has nothing to renew (2xx), and a snapshot of an app
    # whose models cannot load fails (non-2xx fails the phase: aws-lambda-web-adapter
    # docs/src/features/snapstart.md), rather than snapshotting a broken app.
    import socket
    import subprocess
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "LAMBDA_TASK_ROOT": str(LAMBDA_SRC),
        "LAMBDA_RUNTIME_DIR": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "AWS_LWA_PORT": str(port),
        "POWERTOOLS_METRICS_DISABLED": "true",
        "EMBEDDING_MODEL_DIR": str(tmp_path / "missing"),
        **HOOK_PATHS,  # as the stack sets them with snapstart on
    }
    process = subprocess.Popen(
        [str(LAMBDA_SRC / web_adapter.HANDLER)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        status = None
        for _ in range(600):  # a guard against a server that never starts, not a timing check
            try:
                status = httpx.get(
                    f"http://127.0.0.1:{port}{web_adapter.READINESS_PATH}"
                ).status_code
                break
            except httpx.TransportError:
                if process.poll() is not None:
                    break
                time.sleep(0.1)
        hooks = {
            variable: httpx.post(f"http://127.0.0.1:{port}{env[variable]}", timeout=60).status_code
            for variable in HOOK_PATHS
            if status == 200
        }
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0].decode(errors="replace")
    assert status == 200, output
    assert hooks == {AFTER_RESTORE_ENV: 204, BEFORE_SNAPSHOT_ENV: 500}, output


def test_the_app_the_adapter_starts_loads_no_xray_sdk(tmp_path: Path) -> None:
    """Under the Lambda Web Adapter the app runs in its own process, so the per-invocation trace
    id (_X_AMZN_TRACE_ID) the X-Ray SDK reads is never set there (aws/aws-lambda-web-adapter
    issue #312: "XRay trace ID (_X_AMZN_TRACE_ID) is not set for the web apps"). Lambda's own
    service segments need active tracing and the execution role's xray:PutTraceSegments, not an
    SDK in the code (docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/
    omni-send-application-telemetry-from-aws-lambda.html, "Enable active tracing"; asserted in
    tests/infrastructure/test_api_stack.py). So the SDK's import and patching stay out of init:
    the app is imported as in Lambda (AWS_LAMBDA_FUNCTION_NAME set, where Powertools' Tracer
    would enable itself) and no aws_xray_sdk module may be loaded."""
    import json
    import subprocess

    env = {
        **os.environ,
        "PYTHONPATH": str(LAMBDA_SRC),
        "AWS_LAMBDA_FUNCTION_NAME": "business",
        "LAMBDA_TASK_ROOT": str(LAMBDA_SRC),
        "POWERTOOLS_SERVICE_NAME": "rag",
        "EMBEDDING_MODEL_DIR": str(tmp_path / "missing"),
    }
    env.pop("POWERTOOLS_TRACE_DISABLED", None)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys, uvicorn, web.main; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('aws_xray_sdk'))))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
