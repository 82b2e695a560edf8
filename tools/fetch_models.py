"""Download the embedding and reranker models from the Hugging Face Hub, pinned and verified.

`python -m tools.fetch_models` fills build/models/{embedding,reranker}/ with the files listed in
tools/model_assets.json, at the commit recorded there, and checks each file's sha256 against the
lock. A file already in place with the right checksum is not fetched again; a file with the wrong
one is refused and never left in place.

`--update-lock` resolves each model's revision (e.g. "main") to its commit SHA, downloads the
files, checks them against the Hub's own LFS sha256 where the Hub has one, and records the commit
and checksums in the lock. Run it once after changing a model, review the diff, commit it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

DEFAULT_LOCK = Path(__file__).with_name("model_assets.json")
DEFAULT_OUT = Path("build/models")
SOURCE_FILE = "source.json"
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_READ_CHUNK_BYTES = 1 << 20


class Hub(Protocol):
    """The part of `huggingface_hub.HfApi` used here; tests pass an in-process fake."""

    def model_info(
        self, repo_id: str, *, revision: str | None = ..., files_metadata: bool = ...
    ) -> Any: ...

    def hf_hub_download(
        self,
        repo_id: str,
        filename: str,
        *,
        revision: str | None = ...,
        local_dir: str | Path | None = ...,
    ) -> Any: ...


class FetchError(RuntimeError):
    """The lock is incomplete, or a file does not match its checksum."""


@dataclass
class ModelLock:
    repo: str
    revision: str
    files: dict[str, str | None]


@dataclass
class FetchReport:
    downloaded: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_READ_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def load_lock(path: Path) -> dict[str, ModelLock]:
    raw = json.loads(path.read_text())
    return {name: ModelLock(**entry) for name, entry in raw.items()}


def save_lock(path: Path, lock: dict[str, ModelLock]) -> None:
    data = {name: vars(entry) for name, entry in lock.items()}
    scratch = path.with_suffix(".json.tmp")
    scratch.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(scratch, path)


def _check_pinned(name: str, entry: ModelLock, lock_path: Path) -> None:
    hint = f"run `python -m tools.fetch_models --update-lock` once to pin it ({lock_path})"
    if not _COMMIT_SHA.match(entry.revision):
        raise FetchError(f"{name}: revision {entry.revision!r} is not a commit SHA; {hint}")
    unchecked = [path for path, digest in entry.files.items() if not digest]
    if unchecked:
        raise FetchError(f"{name}: no sha256 for {', '.join(unchecked)}; {hint}")


def lock_is_pinned(lock_path: Path) -> bool:
    """Every model names a commit SHA and every file a sha256."""
    return all(
        _COMMIT_SHA.match(entry.revision) and all(entry.files.values())
        for entry in load_lock(lock_path).values()
    )


def _hub_checksums(hub: Hub, entry: ModelLock) -> tuple[str, dict[str, str | None]]:
    """The commit SHA of `entry.revision` and the Hub's LFS sha256 of each locked file."""
    info = hub.model_info(entry.repo, revision=entry.revision, files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings or []}
    absent = [path for path in entry.files if path not in siblings]
    if absent:
        raise FetchError(f"{entry.repo}@{info.sha} has no {', '.join(absent)}")
    return info.sha, {
        path: (lfs.sha256 if (lfs := siblings[path].lfs) else None) for path in entry.files
    }


def _merge_checksums(
    name: str, hub: dict[str, str | None], locked: dict[str, str | None]
) -> dict[str, str | None]:
    """The Hub's LFS checksums, else the lock's for the same commit (small files have no LFS)."""
    merged = dict(hub)
    for path, digest in locked.items():
        if digest and hub.get(path) and hub[path] != digest:
            raise FetchError(f"{name}/{path}: the Hub says sha256 {hub[path]}, the lock {digest}")
        merged[path] = merged.get(path) or digest
    return merged


def fetch_models(
    *,
    hub: Hub,
    lock_path: Path = DEFAULT_LOCK,
    out_dir: Path = DEFAULT_OUT,
    update_lock: bool = False,
) -> FetchReport:
    lock = load_lock(lock_path)
    if not update_lock:
        for name, entry in lock.items():
            _check_pinned(name, entry, lock_path)
    report = FetchReport()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        for name, entry in lock.items():
            expected = dict(entry.files)
            if update_lock:
                old_revision = entry.revision
                entry.revision, hub_sums = _hub_checksums(hub, entry)
                expected = _merge_checksums(
                    name, hub_sums, expected if entry.revision == old_revision else {}
                )
            for path in entry.files:
                destination = out_dir / name / path
                label = f"{name}/{path}"
                want = expected[path]
                if want and destination.is_file() and sha256_of(destination) == want:
                    report.reused.append(label)
                    entry.files[path] = want
                    continue
                staged = Path(
                    str(
                        hub.hf_hub_download(
                            entry.repo, path, revision=entry.revision, local_dir=staging / name
                        )
                    )
                )
                actual = sha256_of(staged)
                if want and actual != want:
                    staged.unlink()
                    origin = f"{entry.repo}@{entry.revision}"
                    raise FetchError(f"{label} from {origin}: sha256 {actual}, expected {want}")
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, destination)
                entry.files[path] = actual
                report.downloaded.append(label)
            # Names the model in traces and chunk metadata (read by rag.adapters.onnx_models).
            source = {"repo": entry.repo, "revision": entry.revision}
            (out_dir / name / SOURCE_FILE).write_text(json.dumps(source) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if update_lock:
        save_lock(lock_path, lock)
    return report


def main(argv: Sequence[str] | None = None, *, hub: Hub | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fetch_models", description=__doc__)
    parser.add_argument("--lock", type=Path, default=DEFAULT_LOCK, help="lock file (JSON)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model folders go here")
    parser.add_argument("--update-lock", action="store_true", help="pin revisions and checksums")
    parser.add_argument(
        "--pin-if-unpinned",
        action="store_true",
        help="first use: when the lock names no commit or checksum yet, pin it (as --update-lock)",
    )
    args = parser.parse_args(argv)
    if hub is None:
        from huggingface_hub import HfApi

        hub = HfApi()
    update_lock = args.update_lock or (args.pin_if_unpinned and not lock_is_pinned(args.lock))
    try:
        report = fetch_models(
            hub=hub, lock_path=args.lock, out_dir=args.out, update_lock=update_lock
        )
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the Hub client's transport errors (httpx) are not OSError
        print(
            f"error: cannot download from the Hugging Face Hub ({type(exc).__name__}: {exc}); "
            "check the network or HF_ENDPOINT. Nothing was written to the lock.",
            file=sys.stderr,
        )
        return 1
    for label in report.downloaded:
        print(f"downloaded {label}")
    for label in report.reused:
        print(f"up to date {label}")
    if update_lock:
        print(f"lock updated: {args.lock}: review it and commit it, so later fetches are verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
