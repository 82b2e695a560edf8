"""Pin a model config's `hf_revision` branch to the commit it points at now (`make pin MODEL=...`).

Only the `hf_revision:` line changes; its comment and the rest of the file are kept as written.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from stacks.config import CONFIG_DIR, ConfigError, load_model_config
from tools.preflight import HfHub, HubClient

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_LINE_RE = re.compile(
    r"^(?P<key>hf_revision:\s*)(?P<value>\"[^\"]*\"|'[^']*'|[^\s#]+)(?P<rest>.*)$", re.MULTILINE
)


def pin(path: Path, hub: HubClient, token: str | None = None) -> tuple[str, str]:
    """Rewrite `path` so hf_revision is a commit SHA; returns (old revision, sha)."""
    config = load_model_config(path.stem, path.parent)
    if config.revision_pinned:
        return config.hf_revision, config.hf_revision
    sha = hub.model_info(config.hf_model_id, revision=config.hf_revision, token=token).sha
    if not sha or not _SHA_RE.match(sha):
        raise ValueError(
            f"the Hub returned no commit SHA for {config.hf_model_id}@{config.hf_revision}"
        )
    text = path.read_text(encoding="utf-8")
    new_text, count = _LINE_RE.subn(lambda m: f"{m['key']}{sha}{m['rest']}", text)
    if count != 1:
        raise ValueError(f"{path}: expected one top-level 'hf_revision:' line, found {count}")
    path.write_text(new_text, encoding="utf-8")
    return config.hf_revision, sha


def main(argv: Sequence[str] | None = None, hub: HubClient | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.pin_revision", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", required=True, help="model_config/<name>.yaml to pin")
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR)
    args = parser.parse_args(argv)
    path = args.config_dir / f"{args.model}.yaml"
    from huggingface_hub.errors import HfHubHTTPError

    try:
        old, sha = pin(
            path, hub or HfHub(os.environ.get("HF_ENDPOINT")), os.environ.get("HF_TOKEN")
        )
    except HfHubHTTPError as exc:
        print(f"pin: cannot resolve the revision on the Hub: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, ValueError, OSError) as exc:
        print(f"pin: {exc}", file=sys.stderr)
        return 1
    if old == sha:
        print(f"pin: {path} is already pinned to {sha}")
    else:
        print(f"pin: {path}: hf_revision {old} -> {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
