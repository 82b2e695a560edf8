#!/usr/bin/env python3
"""CDK entry: validates the configuration, builds the stacks. No AWS calls."""

from __future__ import annotations

import sys

import aws_cdk as cdk

from stacks.app_builder import build_app
from stacks.config import ConfigError


def main() -> None:
    app = cdk.App()
    try:
        build_app(app)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        sys.exit(1)
    app.synth()


if __name__ == "__main__":
    main()
