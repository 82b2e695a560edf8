"""The real Lambda bundles: built the way `cdk deploy` builds them, measured, and imported.

Built for both Lambda architectures (x86_64, arm64): a function's code must be built for its
instruction set (https://docs.aws.amazon.com/lambda/latest/dg/foundation-arch.html). A bundle
imports here only on this machine's own architecture; the other one is checked by its native
libraries' ELF headers instead.

Needs PyPI (manylinux wheels for the runtime); skipped with the reason when it is unreachable.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
from pathlib import Path

import pytest

from stacks.bundling import PLATFORMS, RUNTIME_PYTHON, directory_size, runtime_interpreter
from stacks.config import LambdaArchitecture
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


# ELF e_machine (System V ABI, "ELF Header"; https://refspecs.linuxfoundation.org/elf/gabi4+/ch4.eheader.html):
# EM_X86_64 = 62, EM_AARCH64 = 183 (ARM's "ELF for the Arm 64-bit Architecture").
ELF_MACHINE = {"x86_64": 62, "arm64": 183}
HOST_ARCHITECTURE = {"x86_64": "x86_64", "aarch64": "arm64"}.get(platform.machine())


@pytest.fixture(scope="module", params=list(PLATFORMS))
def architecture(request: pytest.FixtureRequest) -> LambdaArchitecture:
    architecture: LambdaArchitecture = request.param
    return architecture


@pytest.fixture(scope="module")
def built(
    architecture: LambdaArchitecture, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    out = {}
    for name, bundle in (("business", BUSINESS_BUNDLE), ("forwarder", FORWARDER_BUNDLE)):
        target = tmp_path_factory.mktemp(f"{name}-{architecture}")
        bundle.build(target, architecture)
        out[name] = target
    return out


@pytest.mark.parametrize("name", ["business", "forwarder"])
def test_bundle_fits_lambda_with_room(
    built: dict[str, Path], architecture: LambdaArchitecture, name: str
) -> None:
    size_mb = directory_size(built[name]) / 1e6
    print(f"\n{name} bundle: {size_mb:.1f} MB unzipped ({architecture}, python{RUNTIME_PYTHON})")
    assert size_mb < TEST_LIMIT_MB < LAMBDA_LIMIT_MB


def test_native_libraries_are_built_for_the_architecture(
    built: dict[str, Path], architecture: str
) -> None:
    libraries = [p for p in built["business"].rglob("*.so*") if p.is_file()]
    assert any("onnxruntime" in str(p) for p in libraries)
    for library in libraries:
        header = library.read_bytes()[:20]
        if header[:4] != b"\x7fELF":
            continue  # a linker script or data file named like a library
        machine = int.from_bytes(header[18:20], "little")
        assert machine == ELF_MACHINE[architecture], library


def test_boto3_is_left_to_the_runtime(built: dict[str, Path]) -> None:
    for target in built.values():
        assert not list(target.glob("boto3*"))
        assert not list(target.glob("botocore*"))


def lambda_runtime_packages(root: Path) -> Path:
    """What the Lambda Python runtime adds to the bundle: the AWS SDK for Python ("The Python
    runtimes include the AWS SDK for Python (Boto3)",
    https://docs.aws.amazon.com/lambda/latest/dg/lambda-python.html) with the packages boto3
    itself needs, nothing else. Linked from this machine's venv into a folder of their own: the
    venv's whole site-packages would also lend the bundle anything it forgot (it once lent
    `click`, which uvicorn imports and the bundle had excluded)."""
    import boto3

    site = Path(boto3.__file__).parent.parent
    runtime = root / "var-runtime"
    runtime.mkdir()
    for name in ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3"):
        (runtime / name).symlink_to(site / name)
    return runtime


def test_business_bundle_imports_on_the_runtime_python(
    built: dict[str, Path], architecture: str, tmp_path: Path
) -> None:
    if architecture != HOST_ARCHITECTURE:
        pytest.skip(f"{architecture} libraries do not load on this {platform.machine()} machine")
    interpreter = runtime_interpreter()
    if interpreter is None:
        pytest.skip(f"no python{RUNTIME_PYTHON} on this machine to import the bundle with")
    runtime_provided = str(lambda_runtime_packages(tmp_path))
    # The Qdrant store as the Lambda builds it (a server URL: the REST adapter over httpx; no
    # connection is opened until a search). qdrant-client is not bundled (rag.adapters.qdrant_rest
    # says why): an import of it anywhere on this path fails the probe, here or in Lambda's init.
    probe = (
        "import sys, json; sys.path[:0] = [sys.argv[1]]; sys.path.append(sys.argv[2]);"
        "import importlib.util;"
        "import web.main, uvicorn.main, rag.adapters.onnx_models, rag.adapters.vectorstore, rag.adapters.qdrant_rest, rag.adapters.llm.sagemaker, rag.adapters.trace_sinks, rag.wiring;"
        "import onnxruntime, tokenizers, httpx;"
        "from rag.adapters.vectorstore import QdrantStore;"
        "store = QdrantStore.from_settings(url='https://qdrant.invalid', api_key='k', timeout_s=1);"
        "print(json.dumps({'ok': True, 'pyc': bool(sys.modules['rag.domain.pipeline'].__cached__),"
        " 'transport': type(store._transport).__name__,"
        " 'qdrant_client_imported': 'qdrant_client' in sys.modules,"
        " 'qdrant_client_bundled': importlib.util.find_spec('qdrant_client') is not None}))"
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
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ok"] is True
    assert report["transport"] == "QdrantRest"
    assert report["qdrant_client_imported"] is False
    assert report["qdrant_client_bundled"] is False
    # The adapter runs web/run.sh as the handler: it must stay executable in the bundle
    assert os.access(built["business"] / "web" / "run.sh", os.X_OK)
    assert list(
        (built["business"] / "rag" / "__pycache__").glob(
            f"*.cpython-{RUNTIME_PYTHON.replace('.', '')}.pyc"
        )
    )


def test_forwarder_bundle_imports_its_handler_on_the_runtime_python(
    built: dict[str, Path], architecture: str, tmp_path: Path
) -> None:
    """The forwarder's lock is hand-listed and installed with --no-deps: what `import
    forwarder.handler` needs must all be in it (its requirements file's own rule)."""
    if architecture != HOST_ARCHITECTURE:
        pytest.skip(f"{architecture} libraries do not load on this {platform.machine()} machine")
    interpreter = runtime_interpreter()
    if interpreter is None:
        pytest.skip(f"no python{RUNTIME_PYTHON} on this machine to import the bundle with")
    probe = (
        "import sys; sys.path[:0] = [sys.argv[1]]; sys.path.append(sys.argv[2]);"
        "import forwarder.handler; print('ok')"
    )
    done = subprocess.run(
        [
            interpreter,
            "-S",
            "-c",
            probe,
            str(built["forwarder"]),
            str(lambda_runtime_packages(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **os.environ,
            "AWS_DEFAULT_REGION": "eu-west-1",
            "POWERTOOLS_SERVICE_NAME": "forwarder",
        },
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "ok"


def _tree_digest(root: Path) -> str:
    """What Lambda receives: every path, its executable bit and its bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root)}:{os.access(path, os.X_OK)}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_business_bundle_is_the_same_bytes_when_built_again(
    built: dict[str, Path], architecture: LambdaArchitecture, tmp_path: Path
) -> None:
    """The bundle installs its lock in pip's hash-checking mode (every wheel must match a
    `--hash` of the lock: https://pip.pypa.io/en/stable/topics/secure-installs/) and compiles
    byte code with unchecked-hash .pyc headers (no source mtime: PEP 552), so a second build
    gives the same tree, and the asset hash (from the lock and sources) names one content."""
    BUSINESS_BUNDLE.build(tmp_path, architecture)
    assert _tree_digest(tmp_path) == _tree_digest(built["business"])
