"""Copy a model's weights from the Hugging Face Hub to S3 at its pinned commit, verified.

`python -m tools.stage_weights --model <name>` (`make stage-weights MODEL=<name>`) reads
`model_config/<name>.yaml`, lists the files of `hf_model_id` at `hf_revision` (a commit SHA), and
copies the ones TGI loads (config, tokenizer, safetensors) to `weights_s3_prefix`. Each file is
checked while it streams: LFS files (the weights) against the sha256 the Hub records, the others
against their git blob id. It goes to S3 with its sha256 (S3 verifies it on receipt and keeps it),
so a re-run skips files already staged and a corrupt copy is never left in place.

A gated model needs a Hugging Face token here, once (`HF_TOKEN`, or `huggingface-cli login`); the
endpoint then loads from S3 and needs none. Exit codes: 0 staged, 1 a check or copy failed, 2 the
config cannot be staged (no weights_s3_uri, a branch revision).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stacks.config import ConfigError, ModelConfig, load_model_config

STAGED_PATTERNS = ("*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt")
"""What TGI reads from a model folder; the rest (e.g. Llama's `original/*.pth` copy) stays."""
SKIPPED_FOLDERS = ("original/",)
SHA256_METADATA = "sha256"
HUB_TIMEOUT_S = 60
_CHUNK_BYTES = 8 << 20
EXIT_FAILED, EXIT_CONFIG = 1, 2


class StageError(RuntimeError):
    """A file does not match the Hub's checksum, or the config cannot be staged."""


@dataclass(frozen=True)
class HubFile:
    name: str
    size: int
    sha256: str | None
    """LFS files only: the Hub's sha256 of the content."""
    blob_id: str
    """git's id of the content (for non-LFS files, the only checksum the Hub gives)."""


@dataclass
class StageReport:
    prefix: str
    copied: list[str] = field(default_factory=list)
    already_staged: list[str] = field(default_factory=list)


def staged_files(siblings: Sequence[Any]) -> list[HubFile]:
    files = []
    for sibling in siblings:
        name = sibling.rfilename
        if name.startswith(SKIPPED_FOLDERS):
            continue
        if not any(fnmatch.fnmatch(name.rsplit("/", 1)[-1], p) for p in STAGED_PATTERNS):
            continue
        lfs = sibling.lfs
        files.append(
            HubFile(
                name=name,
                size=int(sibling.size or 0),
                sha256=lfs.sha256 if lfs else None,
                blob_id=sibling.blob_id,
            )
        )
    return files


def _split_s3(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    return parts.netloc, parts.path.lstrip("/")


def _staged_sha256(s3: Any, bucket: str, key: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    sha256: str | None = head.get("Metadata", {}).get(SHA256_METADATA)
    return sha256


def _download_verified(
    endpoint: str | None, repo: str, sha: str, file: HubFile, to: Path, token: str | None
) -> str:
    """Stream one file to `to`, checking it against the Hub's checksum; its sha256."""
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = hf_hub_url(repo, file.name, revision=sha, endpoint=endpoint or constants.ENDPOINT)
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(b"blob %d\0" % file.size, usedforsecurity=False)
    with (
        get_session().stream(
            "GET",
            url,
            headers=build_hf_headers(token=token),
            follow_redirects=True,
            timeout=HUB_TIMEOUT_S,
        ) as response,
        to.open("wb") as out,
    ):
        hf_raise_for_status(response)
        for block in response.iter_bytes(_CHUNK_BYTES):
            sha256.update(block)
            blob.update(block)
            out.write(block)
    digest = sha256.hexdigest()
    expected, actual = (file.sha256, digest) if file.sha256 else (file.blob_id, blob.hexdigest())
    if actual != expected:
        raise StageError(
            f"{repo}@{sha} {file.name}: checksum {actual} does not match the Hub's {expected}; "
            "nothing was staged for this file"
        )
    return digest


def stage_weights(
    config: ModelConfig, *, s3: Any, endpoint: str | None = None, token: str | None = None
) -> StageReport:
    """Copy the files TGI needs, verified, to `config.weights_s3_prefix`."""
    from huggingface_hub import HfApi

    prefix = config.weights_s3_prefix
    if prefix is None:
        raise StageError(
            f"model {config.name!r} has no weights_s3_uri: set it in model_config/"
            f"{config.name}.yaml (e.g. weights_s3_uri: s3://<your-bucket>/llm-weights)"
        )
    repo, sha = config.hf_model_id, config.hf_revision
    info = HfApi(endpoint=endpoint).model_info(
        repo, revision=sha, files_metadata=True, token=token, timeout=HUB_TIMEOUT_S
    )
    if info.sha != sha:
        raise StageError(f"the Hub answered commit {info.sha} for {repo}@{sha}")
    bucket, key_prefix = _split_s3(prefix)
    report = StageReport(prefix=prefix)
    with tempfile.TemporaryDirectory(prefix="stage-weights-") as tmp:
        for file in staged_files(info.siblings or []):
            key = key_prefix + file.name
            if file.sha256 and _staged_sha256(s3, bucket, key) == file.sha256:
                report.already_staged.append(file.name)
                continue
            local = Path(tmp) / "file"
            digest = _download_verified(endpoint, repo, sha, file, local, token)
            s3.upload_file(
                str(local),
                bucket,
                key,
                ExtraArgs={
                    # S3 checks the bytes it receives against this checksum and keeps it.
                    "ChecksumAlgorithm": "SHA256",
                    "Metadata": {SHA256_METADATA: digest},
                },
            )
            local.unlink()
            report.copied.append(file.name)
    return report


def main(argv: Sequence[str] | None = None, *, s3: Any = None, endpoint: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.stage_weights", description=__doc__)
    parser.add_argument("--model", required=True, help="model_config/<name>.yaml")
    args = parser.parse_args(argv)
    try:
        config = load_model_config(args.model)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if config.weights_s3_uri is None:
        print(
            f"model {config.name!r} has no weights_s3_uri: set it in model_config/"
            f"{config.name}.yaml, e.g. weights_s3_uri: s3://<your-bucket>/llm-weights",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if s3 is None:
        import boto3

        s3 = boto3.client("s3")
    try:
        report = stage_weights(config, s3=s3, endpoint=endpoint)
    except Exception as exc:  # Hub, S3 or checksum: say which, exit non-zero
        print(f"stage-weights failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"staged {config.hf_model_id}@{config.hf_revision} at {report.prefix}: "
        f"{len(report.copied)} copied, {len(report.already_staged)} already there"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
