"""pip-audit on both Lambdas' locked requirements, when a vulnerability service answers.

pip-audit exits 0 with "No known vulnerabilities found" when the service answers 404 for every
package (each is then only "skipped"), so the service is probed first and a skipped dependency
fails the test: an audit that audited nothing must not pass.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

LOCKED = [
    REPO / "lambda_src" / "requirements.txt",
    REPO / "lambda_src" / "requirements-forwarder.txt",
]
PROBE_TIMEOUT_S = 5
AUDIT_TIMEOUT_S = 300
PYPI_RELEASE_URL = "https://pypi.org/pypi/{name}/{version}/json"
OSV_QUERY_URL = "https://api.osv.dev/v1/query"

pytestmark = pytest.mark.network


def pinned(path: Path) -> list[tuple[str, str]]:
    pins = []
    for line in path.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;#]+)", line.strip()):
            pins.append((match.group(1), match.group(2)))
    return pins


def _answers(request: urllib.request.Request) -> str | None:
    """None when the URL answers 200, else why not."""
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:  # noqa: S310
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def reachable_service() -> tuple[str | None, list[str]]:
    """The first vulnerability service that answers for a pinned package, and what each said."""
    name, version = pinned(LOCKED[0])[0]
    tried: list[str] = []
    pypi = PYPI_RELEASE_URL.format(name=name, version=version)
    why = _answers(urllib.request.Request(pypi))  # noqa: S310 (a fixed https URL)
    if why is None:
        return "pypi", tried
    tried.append(f"PyPI {pypi}: {why}")
    query = json.dumps({"package": {"name": name, "ecosystem": "PyPI"}, "version": version})
    osv = urllib.request.Request(
        OSV_QUERY_URL, data=query.encode(), headers={"Content-Type": "application/json"}
    )
    why = _answers(osv)
    if why is None:
        return "osv", tried
    tried.append(f"OSV {OSV_QUERY_URL}: {why}")
    return None, tried


@pytest.fixture(scope="module")
def service() -> str:
    found, tried = reachable_service()
    if found is None:
        pytest.skip(
            "no vulnerability service reachable, pip-audit not run on the Lambda requirements ("
            + "; ".join(tried)
            + ")"
        )
    return found


def test_every_lambda_requirement_is_pinned() -> None:
    for path in LOCKED:
        lines = [
            line.strip()
            for line in path.read_text().splitlines()
            # A requirement's own line; its `--hash=` continuation lines belong to it.
            if line.strip() and not line.lstrip().startswith(("#", "--"))
        ]
        assert len(pinned(path)) == len(lines), f"{path.name}: every entry must be name==version"


@pytest.mark.parametrize("requirements", LOCKED, ids=[p.name for p in LOCKED])
def test_locked_lambda_requirements_have_no_known_vulnerabilities(
    service: str, requirements: Path
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip_audit",
            "--requirement",
            str(requirements),
            "--no-deps",
            "--disable-pip",
            "--vulnerability-service",
            service,
            "--format",
            "json",
            "--progress-spinner",
            "off",
            "--timeout",
            str(PROBE_TIMEOUT_S * 3),
        ],
        capture_output=True,
        text=True,
        timeout=AUDIT_TIMEOUT_S,
        check=False,
    )
    assert done.stdout.strip(), f"pip-audit printed no report: {done.stderr[-2000:]}"
    report = json.loads(done.stdout)
    dependencies = report["dependencies"]
    assert len(dependencies) == len(pinned(requirements))
    not_audited = [f"{d['name']}: {d['skip_reason']}" for d in dependencies if "skip_reason" in d]
    assert not not_audited, f"{service} answered the probe but not for: {not_audited}"
    vulnerable = [
        f"{d['name']}=={d['version']}: {v['id']} (fixed in {', '.join(v['fix_versions']) or '-'})"
        for d in dependencies
        for v in d.get("vulns", [])
    ]
    assert not vulnerable, f"{requirements.name}: known vulnerabilities:\n" + "\n".join(vulnerable)
