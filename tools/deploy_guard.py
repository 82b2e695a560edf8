"""Refuse to deploy a moving target: `python -m tools.deploy_guard --model <name>` (`make deploy`).

A model whose `hf_revision` is a branch serves whatever the Hub holds on the day of the deploy
(or of the next scale-out), and an unpinned embedding/reranker lock (tools/model_assets.json)
would pin itself from the same download it then checks. Both are refused unless the override
named in the message is given. Exit codes: 0 pinned (or overridden), 2 refused.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stacks.config import CONFIG_DIR, ConfigError, load_model_config
from tools.fetch_models import DEFAULT_LOCK, lock_is_pinned

OVERRIDE = "ALLOW_UNPINNED=1"
"""What to add to `make deploy` to deploy an unpinned model or lock on purpose."""
EXIT_REFUSED = 2


def problems(model: str, *, config_dir: Path, lock: Path) -> list[str]:
    config = load_model_config(model, config_dir)
    found = []
    if not config.revision_pinned:
        found.append(
            f"model_config/{model}.yaml: hf_revision {config.hf_revision!r} is a branch, not a "
            f"commit SHA; run `make pin MODEL={model}`, review and commit the YAML"
        )
    if not lock_is_pinned(lock):
        found.append(
            f"{lock.name}: the embedding/reranker lock is not pinned (a revision that is not a "
            "commit SHA, or a file without sha256); run `make models` once (it pins the lock), "
            "review and commit it"
        )
    return found


def main(
    argv: Sequence[str] | None = None, *, config_dir: Path = CONFIG_DIR, lock: Path = DEFAULT_LOCK
) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.deploy_guard", description=__doc__)
    parser.add_argument("--model", required=True, help="model_config/<name>.yaml")
    parser.add_argument(
        "--allow-unpinned", action="store_true", help=f"deploy anyway (make deploy {OVERRIDE})"
    )
    args = parser.parse_args(argv)
    try:
        found = problems(args.model, config_dir=config_dir, lock=lock)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_REFUSED
    if not found:
        return 0
    listed = "\n".join(f"  - {problem}" for problem in found)
    if args.allow_unpinned:
        print(f"warning: deploying a moving target ({OVERRIDE}):\n{listed}", file=sys.stderr)
        return 0
    print(
        f"make deploy refuses a moving target:\n{listed}\n"
        f"To deploy it anyway, on purpose: make deploy {OVERRIDE}",
        file=sys.stderr,
    )
    return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
