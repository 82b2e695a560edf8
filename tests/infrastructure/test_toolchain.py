"""The toolchain under every synth: a supported Node.js for jsii."""

from __future__ import annotations

import os
import subprocess
import sys


def test_jsii_runs_the_cdk_on_a_node_it_supports_without_a_warning():
    """jsii checks the Node.js it runs on and prints a banner to stderr when that release is
    deprecated, end-of-life or untested, each ending "This software is currently running on node
    vX" (aws/jsii packages/@jsii/check-node/src/index.ts, `checkNode`; JSII_SILENCE_WARNING_*
    variables hide it). With the tests' PATH (conftest: the venv's Node.js first) and no silencing,
    importing the CDK prints no such banner."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JSII_SILENCE_WARNING")}
    done = subprocess.run(
        [sys.executable, "-c", "import aws_cdk"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "currently running on node" not in done.stderr, done.stderr
