"""Lambda code and model assets, bundled on the deployer's machine (no Docker).

Dependencies come from each Lambda's lock (lambda_src/requirements*.txt, written by `make lock`)
in pip's hash-checking mode, as manylinux wheels for the Lambda runtime's Python and architecture
(`pip --platform ... --only-binary=:all:`), so what is bundled is what Lambda runs whatever the
build machine is, and the same bytes every time. boto3/botocore come with the Lambda runtime and
are removed from the bundle.
Byte code is compiled with the runtime's own Python when this machine has it, so the first
import in Lambda does not pay for compilation (and cannot: the code directory is read-only).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jsii
from aws_cdk import BundlingOptions, DockerImage, ILocalBundling

from stacks.config import LambdaArchitecture
from tools.fetch_models import DEFAULT_LOCK as MODEL_LOCK
from tools.fetch_models import SOURCE_FILE, load_lock

REPO = Path(__file__).resolve().parent.parent
LAMBDA_SRC = REPO / "lambda_src"
RUNTIME_PYTHON = "3.13"
LAMBDA_TASK_ROOT = "/var/task"
PLATFORMS: dict[LambdaArchitecture, tuple[str, ...]] = {
    "x86_64": ("manylinux2014_x86_64", "manylinux_2_28_x86_64"),
    "arm64": ("manylinux2014_aarch64", "manylinux_2_28_aarch64"),
}
"""pip platform tags per Lambda architecture: Lambda's Python 3.13 runs on Amazon Linux 2023
(glibc 2.34), so manylinux_2_28 wheels load there, and manylinux2014 (glibc 2.17) ones too."""
# Provided by the Lambda Python runtime; bundling them only adds size (and version skew).
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")
LAMBDA_TMP_BYTES = 512 * 2**20
"""Lambda's default ephemeral storage (/tmp), which the stack keeps: SnapStart refuses more."""
_UNUSED_AT_RUNTIME = ("__pycache__", "tests", "*.dist-info/RECORD")


def pip_target_command(
    requirements: Path,
    target: Path,
    *,
    architecture: LambdaArchitecture,
    python_version: str = RUNTIME_PYTHON,
) -> list[str]:
    """Install exactly the lock: every file checked against its hash (--require-hashes) and no
    dependency resolved beyond it (--no-deps: the lock is the whole closure; the forwarder's is
    hand-listed, smaller than what opik declares). No --upgrade: the lock decides versions."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--requirement",
        str(requirements),
        "--require-hashes",
        "--no-deps",
        "--target",
        str(target),
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        "--only-binary=:all:",
        "--no-compile",
    ]
    for platform in PLATFORMS[architecture]:
        command += ["--platform", platform]
    return command


def runtime_interpreter(python_version: str = RUNTIME_PYTHON) -> str | None:
    """A working `python<version>`: on PATH, or installed by pyenv but not activated."""
    candidates = [shutil.which(f"python{python_version}")]
    candidates += sorted(
        str(p)
        for p in Path.home().glob(f".pyenv/versions/{python_version}*/bin/python{python_version}")
    )
    for candidate in filter(None, candidates):
        probe = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == python_version:
            return candidate
    return None


def compile_bytecode(target: Path, python_version: str = RUNTIME_PYTHON) -> bool:
    """Compile with the runtime's Python if this machine has it; report whether it did."""
    interpreter = runtime_interpreter(python_version)
    if interpreter is None:
        print(f"bundling: no python{python_version} here, shipping sources only", file=sys.stderr)
        return False
    subprocess.run(  # noqa: S603 - fixed argv, no shell
        [
            interpreter,
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            # Source paths as Lambda sees them (the code is unpacked in LAMBDA_TASK_ROOT), not
            # this build's temporary folder: right tracebacks, and the same bytes every build.
            "-s",
            str(target),
            "-p",
            LAMBDA_TASK_ROOT,
            str(target),
        ],
        check=True,
        # Sets of strings are marshalled in hash order: one seed, one order.
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    return True


def remove_runtime_provided(target: Path) -> None:
    for name in RUNTIME_PROVIDED:
        for path in [*target.glob(name), *target.glob(f"{name}-*.dist-info")]:
            shutil.rmtree(path, ignore_errors=True)


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _bundled(path: Path) -> bool:
    return path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"


@dataclass(frozen=True)
class PythonBundle:
    """One Lambda's bundle: its runtime requirements plus its own packages from lambda_src/."""

    requirements: Path
    """The lock (with hashes) of the Lambda's runtime dependencies."""
    packages: Sequence[str]
    exclude: Sequence[str] = ()
    """Globs (relative to the bundle root) of installed files the code never imports."""

    def build(self, target: Path, architecture: LambdaArchitecture) -> None:
        target.mkdir(parents=True, exist_ok=True)
        print(
            f"bundling {', '.join(self.packages)} for {architecture}: "
            f"pip install -r {self.requirements.name}",
            file=sys.stderr,
        )
        command = pip_target_command(self.requirements, target, architecture=architecture)
        subprocess.run(command, check=True)  # noqa: S603 - fixed argv, no shell
        remove_runtime_provided(target)
        for pattern in self.exclude:
            for path in target.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        for package in self.packages:
            shutil.copytree(
                LAMBDA_SRC / package,
                target / package,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        compile_bytecode(target)
        print(f"bundled {directory_size(target) / 1e6:.1f} MB unzipped", file=sys.stderr)

    def options(self, architecture: LambdaArchitecture) -> BundlingOptions:
        return BundlingOptions(
            # Never used: local bundling always succeeds or raises. CDK requires an image.
            image=DockerImage.from_registry("unused-local-bundling-only"),
            local=_LocalBundler(lambda target: self.build(target, architecture)),
        )

    def fingerprint(self, architecture: LambdaArchitecture) -> str:
        digest = hashlib.sha256(self.requirements.read_bytes())
        digest.update(
            json.dumps(
                [
                    self.packages,
                    self.exclude,
                    RUNTIME_PYTHON,
                    PLATFORMS[architecture],
                ]
            ).encode()
        )
        for path in self.source_files():
            digest.update(str(path.relative_to(LAMBDA_SRC)).encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()

    def source_files(self) -> list[Path]:
        """Every file of lambda_src/ that build() copies (the chat page's static files too)."""
        return sorted(
            path
            for package in self.packages
            for path in (LAMBDA_SRC / package).rglob("*")
            if _bundled(path)
        )


@dataclass(frozen=True)
class ModelBundle:
    """The embedding and reranker model folders, zipped into one asset loaded at Lambda init."""

    embedding_dir: Path
    reranker_dir: Path
    lock: Path = MODEL_LOCK
    """tools/model_assets.json: the models' repos, commits and file checksums."""

    def build(self, target: Path) -> None:
        sources = (("embedding", self.embedding_dir), ("reranker", self.reranker_dir))
        for name, source in sources:
            if not source.is_dir():
                raise FileNotFoundError(
                    f"model folder {source} is missing: run `make models` (downloads the pinned "
                    f"models from the Hugging Face Hub) or set -c {name}_model_dir=<folder>"
                )
        # The Lambda downloads the zip to /tmp and extracts it beside it (rag.adapters.model_store);
        # ONNX weights barely compress, so the peak is about twice the models.
        peak = 2 * sum(directory_size(source) for _, source in sources)
        if peak > LAMBDA_TMP_BYTES:
            raise ValueError(
                f"the models need ~{peak / 2**20:.0f} MiB of /tmp at load, more than Lambda's "
                f"{LAMBDA_TMP_BYTES / 2**20:.0f} MiB (the most SnapStart allows)"
            )
        for name, source in sources:
            shutil.copytree(source, target / name, dirs_exist_ok=True)

    def options(self) -> BundlingOptions:
        return BundlingOptions(
            image=DockerImage.from_registry("unused-local-bundling-only"),
            local=_LocalBundler(self.build),
        )

    def fingerprint(self) -> str:
        """What the folders hold, not when they were written: each file's sha256. For a folder
        `make models` fetched (and verified) at the commit the model lock pins, the lock's
        checksums stand for the files it lists; any other file is read (a folder given by
        context, source.json, a lock not pinned yet)."""
        digest = hashlib.sha256()
        for name, folder in (("embedding", self.embedding_dir), ("reranker", self.reranker_dir)):
            pinned = self._pinned_checksums(name, folder)
            for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
                if path.is_file():
                    relative = path.relative_to(folder).as_posix()
                    checksum = pinned.get(relative) or _sha256_of(path)
                    digest.update(f"{name}/{relative}:{checksum}\n".encode())
        return digest.hexdigest()

    def _pinned_checksums(self, name: str, folder: Path) -> dict[str, str]:
        entry = load_lock(self.lock).get(name)
        source = folder / SOURCE_FILE
        if entry is None or not source.is_file():
            return {}
        if json.loads(source.read_text()) != {"repo": entry.repo, "revision": entry.revision}:
            return {}
        return {path: checksum for path, checksum in entry.files.items() if checksum}


def _sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@jsii.implements(ILocalBundling)
class _LocalBundler:
    def __init__(self, build: Callable[[Path], None]):
        self._build = build

    def try_bundle(self, output_dir: str, *, image: DockerImage, **_: object) -> bool:
        self._build(Path(output_dir))
        return True
