"""The real Lambda bundles: built the way `cdk deploy` builds them, measured, and imported.

Needs PyPI (manylinux wheels for the runtime); skipped with the reason when it is unreachable.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from stacks.bundling import PLATFORMS, RUNTIME_PYTHON, directory_size, runtime_interpreter
from stacks.constructs.rag_api import BUSINESS_BUNDLE
from stacks.constructs.trace_pipeline import FORWARDER_BUNDLE

LAMBDA_LIMIT_MB = 250
TEST_LIMIT_MB = 230  # room below Lambda's hard limit for the next dependency bump


def _pypi_reachable() -> bool:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")
    host = index.split("://", 1)[-1].split("/", 1)[0].split(":")[0]
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(not _pypi_reachable(), reason="PyPI unreachable: bundle size not measured"),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, bundle in (("business", BUSINESS_BUNDLE), ("forwarder", FORWARDER_BUNDLE)):
        target = tmp_path_factory.mktemp(name)
        bundle.build(target)
        out[name] = target
    return out


@pytest.mark.parametrize("name", ["business", "forwarder"])
def test_bundle_fits_lambda_with_room(built, name):
    size_mb = directory_size(built[name]) / 1e6
    print(f"\n{name} bundle: {size_mb:.1f} MB unzipped ({PLATFORMS[0]}, python{RUNTIME_PYTHON})")
    assert size_mb < TEST_LIMIT_MB < LAMBDA_LIMIT_MB


def test_boto3_is_left_to_the_runtime(built):
    for target in built.values():
        assert not list(target.glob("boto3*"))
        assert not list(target.glob("botocore*"))


def test_business_bundle_imports_on_the_runtime_python(built):
    interpreter = runtime_interpreter()
    if interpreter is None:
        pytest.skip(f"no python{RUNTIME_PYTHON} on this machine to import the bundle with")
    import boto3

    runtime_provided = str(Path(boto3.__file__).parent.parent)
    probe = (
        "import sys, json; sys.path[:0] = [sys.argv[1]]; sys.path.append(sys.argv[2]);"
        "import web.main, uvicorn, rag.onnx_models, rag.vectorstore, rag.llm, rag.sinks;"
        "import onnxruntime, tokenizers, qdrant_client;"
        "print(json.dumps({'ok': True, 'pyc': bool(sys.modules['rag.pipeline'].__cached__)}))"
    )
    # -S: nothing from this machine's site-packages, only the bundle (+ boto3 as Lambda has it)
    done = subprocess.run(
        [interpreter, "-S", "-c", probe, str(built["business"]), runtime_provided],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["ok"] is True
    # The adapter runs web/run.sh as the handler: it must stay executable in the bundle
    assert os.access(built["business"] / "web" / "run.sh", os.X_OK)
    assert list(
        (built["business"] / "rag" / "__pycache__").glob(
            f"*.cpython-{RUNTIME_PYTHON.replace('.', '')}.pyc"
        )
    )


def _tree_digest(root: Path) -> str:
    """What Lambda receives: every path, its executable bit and its bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root)}:{os.access(path, os.X_OK)}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_business_bundle_is_the_same_bytes_when_built_again(built, tmp_path):
    """The bundle installs its lock in pip's hash-checking mode (every wheel must match a
    `--hash` of the lock: https://pip.pypa.io/en/stable/topics/secure-installs/) and compiles
    byte code with unchecked-hash .pyc headers (no source mtime: PEP 552), so a second build
    gives the same tree, and the asset hash (from the lock and sources) names one content."""
    BUSINESS_BUNDLE.build(tmp_path)
    assert _tree_digest(tmp_path) == _tree_digest(built["business"])
