"""Print names the Makefile needs (stack names, the configured model) from cdk.json context.

`python -m tools.stack_names endpoint|api|model`; `-c key=value` overrides are not seen here, so the
Makefile passes MODEL explicitly where it matters.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from stacks.config import load_deployment_config

REPO = Path(__file__).resolve().parent.parent


def names() -> dict[str, str]:
    context = json.loads((REPO / "cdk.json").read_text())["context"]
    deployment = load_deployment_config(context)
    return {
        "endpoint": deployment.stack_name("endpoint"),
        "api": deployment.stack_name("api"),
        "model": deployment.model,
    }


def main(argv: list[str]) -> int:
    known = names()
    if len(argv) != 1 or argv[0] not in known:
        print(f"usage: python -m tools.stack_names {{{'|'.join(known)}}}", file=sys.stderr)
        return 2
    print(known[argv[0]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
