"""Where the embedding and reranker models live, resolved once at cold start.

Local folders win (EMBEDDING_MODEL_DIR / RERANKER_MODEL_DIR: tests, local mode). Otherwise the
model asset (MODEL_ASSET_S3_URI, a zip holding `embedding/` and `reranker/`) is downloaded and
extracted under /tmp once per container. Extraction goes to a scratch folder renamed into place
only when complete, so a failed or interrupted download never leaves a half-written model that a
later invocation would trust. The folder name derives from the URI: CDK asset keys are content
hashes, so a new model means a new URI and a fresh extraction.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rag.adapters.onnx_models import ModelLoadError, find_model_file

logger = logging.getLogger(__name__)

DEFAULT_CACHE_ROOT = Path(tempfile.gettempdir()) / "rag-models"
ASSET_FOLDERS = ("embedding", "reranker")


class ModelAssetError(RuntimeError):
    """The model asset cannot be found, downloaded or unpacked."""


@dataclass(frozen=True)
class ModelDirs:
    embedding: Path
    reranker: Path | None


def parse_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise ModelAssetError(f"MODEL_ASSET_S3_URI must look like s3://bucket/key.zip, got {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def _check_model_dir(folder: Path) -> Path:
    if not (folder / "tokenizer.json").is_file():
        raise ModelAssetError(f"no tokenizer.json in {folder}")
    try:
        find_model_file(folder)
    except ModelLoadError as exc:
        raise ModelAssetError(str(exc)) from None
    return folder


def _safe_extract(archive: zipfile.ZipFile, target: Path) -> None:
    root = target.resolve()
    for member in archive.infolist():
        destination = (target / member.filename).resolve()
        if not destination.is_relative_to(root):
            raise ModelAssetError(f"model asset entry {member.filename!r} escapes the folder")
    archive.extractall(target)


def fetch_asset(uri: str, *, s3_client: Any, cache_root: Path = DEFAULT_CACHE_ROOT) -> Path:
    """Download and unzip the asset once; later calls (and later invocations) reuse it."""
    bucket, key = parse_s3_uri(uri)
    final = cache_root / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if final.is_dir():
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache_root))
    try:
        archive_path = scratch / "asset.zip"
        try:
            s3_client.download_file(bucket, key, str(archive_path))
        except Exception as exc:  # botocore's errors vary; the message is what matters
            raise ModelAssetError(f"cannot download {uri}: {exc}") from None
        unpacked = scratch / "unpacked"
        try:
            with zipfile.ZipFile(archive_path) as archive:
                _safe_extract(archive, unpacked)
        except zipfile.BadZipFile:
            raise ModelAssetError(f"{uri} is not a zip file") from None
        for name in ASSET_FOLDERS:
            if (unpacked / name).is_dir():
                _check_model_dir(unpacked / name)
        if not (unpacked / "embedding").is_dir():
            raise ModelAssetError(f"{uri} has no embedding/ folder")
        try:
            os.rename(unpacked, final)
        except OSError:
            if not final.is_dir():  # else another process won the race with the same content
                raise
        logger.info("model asset %s extracted to %s", uri, final)
        return final
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def resolve_model_dirs(
    *,
    embedding_dir: Path | None = None,
    reranker_dir: Path | None = None,
    asset_s3_uri: str | None = None,
    s3_client: Any = None,
    need_reranker: bool = True,
    cache_root: Path = DEFAULT_CACHE_ROOT,
) -> ModelDirs:
    """Local folders first, then the S3 asset for whatever is still missing."""
    embedding = _check_model_dir(Path(embedding_dir)) if embedding_dir else None
    reranker = _check_model_dir(Path(reranker_dir)) if reranker_dir else None
    if embedding is None or (need_reranker and reranker is None):
        if not asset_s3_uri:
            missing = "EMBEDDING_MODEL_DIR" if embedding is None else "RERANKER_MODEL_DIR"
            raise ModelAssetError(f"set {missing} or MODEL_ASSET_S3_URI to find the models")
        if s3_client is None:
            import boto3  # only on this path: the Lambda runtime has it, local mode may not

            s3_client = boto3.client("s3")
        asset = fetch_asset(asset_s3_uri, s3_client=s3_client, cache_root=cache_root)
        embedding = embedding or asset / "embedding"
        if reranker is None and (asset / "reranker").is_dir():
            reranker = asset / "reranker"
    if need_reranker and reranker is None:
        raise ModelAssetError(f"{asset_s3_uri} has no reranker/ folder")
    return ModelDirs(embedding=embedding, reranker=reranker)
