"""checkov passes on every synthesized template, with the skips of `.checkov.yaml` and no others.

checkov pins its own boto3 (and more) exactly, so it lives in `.venv-checkov`, which
`make test` creates (`make checkov-venv`).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.infrastructure.scanned_contexts import SCANNED

CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
CONFIG = REPO / ".checkov.yaml"
MIN_REASON_CHARS = 40
TIMEOUT_S = 300


def skips_with_reasons(text: str) -> dict[str, str]:
    """`{check id: the comment block right above it}` for each `skip-check` entry."""
    skips: dict[str, str] = {}
    comment: list[str] = []
    in_skips = False
    for line in text.splitlines():
        stripped = line.strip()
        if not line.startswith(" ") and stripped:
            in_skips = stripped.startswith("skip-check:")
            comment = []
            continue
        if not in_skips:
            continue
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("# "))
        elif match := re.fullmatch(r"-\s*(CKV2?_[A-Z0-9_]+)\s*(#.*)?", stripped):
            skips[match.group(1)] = " ".join(comment)
            comment = []
    return skips


SKIPS = skips_with_reasons(CONFIG.read_text())


def _checkov(*args: str, cwd: Path = REPO) -> list[dict[str, Any]]:
    if not CHECKOV.exists():
        pytest.skip(f"checkov is not installed: run `make checkov-venv` (creates {CHECKOV.parent})")
    done = subprocess.run(
        [str(CHECKOV), *args, "--output", "json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.stdout.strip(), f"checkov printed nothing: {done.stderr[-2000:]}"
    reports = json.loads(done.stdout)
    return reports if isinstance(reports, list) else [reports]


@pytest.fixture(scope="module")
def template_dir(
    tmp_path_factory: pytest.TempPathFactory, synth: Callable[..., dict[str, Any]]
) -> Path:
    out = tmp_path_factory.mktemp("checkov")
    for name, context in SCANNED.items():
        for stack, template in synth(**context).items():
            (out / f"{name}-{stack}.template.json").write_text(json.dumps(template))
    return out


def test_every_skip_has_a_reason() -> None:
    assert SKIPS, f"no skip-check entries parsed from {CONFIG}"
    for check, reason in SKIPS.items():
        assert len(reason) >= MIN_REASON_CHARS, f"{check} in {CONFIG.name} needs a real reason"


def test_checkov_passes_on_every_template(template_dir: Path) -> None:
    # Given every template of the scanned contexts; When checkov runs with the project's config
    reports = _checkov("--config-file", str(CONFIG), "--directory", str(template_dir))
    # Then it parsed them all and nothing fails
    summary = reports[0]["summary"]
    assert summary["parsing_errors"] == 0, summary
    assert summary["resource_count"] > 100, summary
    failed = [
        f"{f['check_id']} {f['check_name']}: {Path(f['file_path']).name} {f['resource']}"
        for report in reports
        for f in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)


def test_every_skip_is_still_needed(template_dir: Path) -> None:
    # A skipped check that no longer fails anywhere should be removed from .checkov.yaml.
    reports = _checkov(
        "--framework",
        "cloudformation",
        "--skip-download",
        "--quiet",
        "--check",
        ",".join(SKIPS),
        "--directory",
        str(template_dir),
        cwd=template_dir,  # away from the repo's .checkov.yaml, which checkov reads from cwd
    )
    failing = {f["check_id"] for r in reports for f in r["results"]["failed_checks"]}
    assert set(SKIPS) - failing == set()
