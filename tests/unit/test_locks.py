"""Every environment installs from a lock with hashes, written by `make lock` from its *.in.

pip's hash-checking mode (https://pip.pypa.io/en/stable/topics/secure-installs/, "Hash-checking
Mode"): it is all-or-nothing, hashes are required for *all* requirements, and each requirement
must be pinned with `==` ("Additional restrictions"); pip refuses a file that breaks either.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from stacks.bundling import (
    LAMBDA_SRC,
    LAMBDA_TASK_ROOT,
    RUNTIME_PYTHON,
    ModelBundle,
    compile_bytecode,
    pip_target_command,
    runtime_interpreter,
)
from stacks.constructs.api_key_authorizer import AUTHORIZER_BUNDLE
from stacks.constructs.rag_api import BUSINESS_BUNDLE
from stacks.constructs.trace_pipeline import FORWARDER_BUNDLE
from tools.fetch_models import SOURCE_FILE

REPO = LAMBDA_SRC.parent
LOCKS = [
    REPO / "requirements.txt",
    REPO / "requirements-checkov.txt",
    *sorted(LAMBDA_SRC.glob("requirements*.txt")),
]
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def _entries(lock: Path) -> list[str]:
    """The requirement entries of a lock: continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", lock.read_text())
    lines = (line.split(" #")[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _pins(path: Path) -> dict[str, str]:
    """name -> exact version of every `==` requirement in a requirements file and its `-r`s."""
    pins: dict[str, str] = {}
    for line in _entries(path):
        if line.startswith(("-r ", "--requirement ")):
            pins |= _pins(path.parent / line.split(maxsplit=1)[1])
            continue
        requirement = Requirement(line.split(" --hash")[0].split(";")[0].strip())
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{path.name}: {line} is not pinned with =="
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def test_every_bundle_installs_from_a_lock_that_make_lock_writes() -> None:
    for bundle in (BUSINESS_BUNDLE, FORWARDER_BUNDLE, AUTHORIZER_BUNDLE):
        assert bundle.requirements in LOCKS
        assert "make lock" in bundle.requirements.read_text().splitlines()[1]


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: str(p.relative_to(REPO)))
def test_lock_pins_every_requirement_with_a_hash(lock: Path) -> None:
    """pip's hash-checking mode needs `==` and a hash on every line, dependencies included."""
    entries = _entries(lock)
    for entry in entries:
        assert _HASH.search(entry), f"{lock.name}: no sha256 for {entry.split()[0]}"
    _pins(lock)  # asserts == on each entry


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: str(p.relative_to(REPO)))
def test_lock_holds_what_its_input_pins(lock: Path) -> None:
    """A version changed in the human-edited *.in without `make lock` is caught here."""
    source = lock.with_suffix(".in")
    locked = _pins(lock)
    stale = {
        name: (version, locked.get(name))
        for name, version in _pins(source).items()
        if locked.get(name) != version
    }
    assert not stale, f"{lock.name} is older than {source.name} (run make lock): {stale}"


def test_lambda_locks_take_the_versions_the_tests_run() -> None:
    """The tests import the Lambda code in the venv: a package both have is the same release."""
    venv = _pins(REPO / "requirements.txt")
    for lock in LAMBDA_SRC.glob("requirements*.txt"):
        differ = {n: (v, venv[n]) for n, v in _pins(lock).items() if venv.get(n, v) != v}
        assert not differ, f"{lock.name} vs requirements.txt: {differ}"


def test_bundling_installs_the_lock_in_hash_checking_mode_without_upgrading(tmp_path: Path) -> None:
    """--require-hashes: a lock entry whose download differs fails the build (pip's docs above);
    --no-deps: the lock is the whole closure, pip adds nothing to it; no --upgrade, which would
    let pip's resolver, not the lock, pick versions."""
    command = pip_target_command(BUSINESS_BUNDLE.requirements, tmp_path, architecture="x86_64")
    assert command[command.index("--requirement") + 1] == str(BUSINESS_BUNDLE.requirements)
    assert {"--require-hashes", "--no-deps", "--only-binary=:all:"} <= set(command)
    assert not {"--upgrade", "-U", "--upgrade-strategy"} & set(command)


def _model_folders(root: Path) -> ModelBundle:
    for name in ("embedding", "reranker"):
        (root / name / "onnx").mkdir(parents=True)
        (root / name / "onnx" / "model.onnx").write_bytes(name.encode() * 100)
        (root / name / "tokenizer.json").write_text("{}")
    return ModelBundle(embedding_dir=root / "embedding", reranker_dir=root / "reranker")


def test_model_fingerprint_follows_the_bytes_not_the_file_times(tmp_path: Path) -> None:
    """CDK reuses an asset whose custom hash is unchanged (AssetHashType.CUSTOM): touching the
    files must not cause a new upload, changing a byte must."""
    bundle = _model_folders(tmp_path)
    before = bundle.fingerprint()
    for path in tmp_path.rglob("*"):
        os.utime(path, (1, 1))
    assert bundle.fingerprint() == before
    (tmp_path / "reranker" / "tokenizer.json").write_text('{"changed": true}')
    assert bundle.fingerprint() != before


def test_model_fingerprint_reads_the_pinned_checksums_in_a_fetched_folder(tmp_path: Path) -> None:
    """A folder tools.fetch_models filled (its source.json names the locked commit; the files
    were verified against the lock) is fingerprinted by the lock's sha256s: re-pinning a model
    changes the asset hash; a folder from elsewhere, without source.json, is read instead."""
    bundle = _model_folders(tmp_path)
    lock: dict[str, dict[str, Any]] = {
        name: {"repo": f"org/{name}", "revision": "c" * 40, "files": {"onnx/model.onnx": "a" * 64}}
        for name in ("embedding", "reranker")
    }
    bundle = ModelBundle(bundle.embedding_dir, bundle.reranker_dir, lock=tmp_path / "lock.json")
    bundle.lock.write_text(json.dumps(lock))
    read = bundle.fingerprint()
    for name in lock:
        source = {"repo": f"org/{name}", "revision": "c" * 40}
        (tmp_path / name / SOURCE_FILE).write_text(json.dumps(source))
    pinned = bundle.fingerprint()
    assert pinned != read
    lock["reranker"]["files"]["onnx/model.onnx"] = "b" * 64
    bundle.lock.write_text(json.dumps(lock))
    assert bundle.fingerprint() != pinned


def test_byte_code_is_the_same_wherever_the_bundle_is_built(tmp_path: Path) -> None:
    """A .pyc records its source path (code.co_filename). Lambda unpacks the code in
    LAMBDA_TASK_ROOT, /var/task ("Defined runtime environment variables", AWS Lambda Developer
    Guide, https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html), so the byte
    code names that path: the same bytes from any build folder, and tracebacks that point there."""
    if runtime_interpreter() is None:
        pytest.skip(f"no python{RUNTIME_PYTHON} here: bundles ship sources only")
    source = "ROUTES = {'a', 'b', 'c', 'd'}\n\ndef fail():\n    raise ValueError(ROUTES)\n"
    built = []
    for folder in ("one", "elsewhere/two"):
        (tmp_path / folder / "pkg").mkdir(parents=True)
        (tmp_path / folder / "pkg" / "mod.py").write_text(source)
        assert compile_bytecode(tmp_path / folder)
        (pyc,) = (tmp_path / folder / "pkg" / "__pycache__").glob("mod.*.pyc")
        built.append(pyc.read_bytes())
    assert built[0] == built[1]
    assert f"{LAMBDA_TASK_ROOT}/pkg/mod.py".encode() in built[0]
