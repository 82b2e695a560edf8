"""Model folders at cold start: local folders, else the S3 asset unpacked once (moto's S3)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devkit.tiny_models import build_cross_encoder, build_embedder
from rag.adapters.model_store import ModelAssetError, fetch_asset, resolve_model_dirs
from rag.adapters.onnx_models import OnnxCrossEncoder, OnnxEmbedder

BUCKET = "model-assets"
KEY = "assets/abc123.zip"
URI = f"s3://{BUCKET}/{KEY}"


class CountingS3:
    """The real (moto-backed) boto3 client, counting downloads."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.downloads = 0

    def download_file(self, bucket: str, key: str, filename: str) -> None:
        self.downloads += 1
        self._client.download_file(bucket, key, filename)


def _zip_of(folders: dict[str, Path], extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for prefix, folder in folders.items():
            for file in folder.rglob("*"):
                if file.is_file():
                    archive.write(file, f"{prefix}/{file.relative_to(folder)}")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingS3]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield CountingS3(client)


@pytest.fixture
def model_folders(tmp_path: Path) -> dict[str, Path]:
    return {
        "embedding": build_embedder(tmp_path / "src" / "embedding", onnx_subfolder=True),
        "reranker": build_cross_encoder(tmp_path / "src" / "reranker"),
    }


def test_local_folders_win_and_s3_is_not_touched(model_folders: dict[str, Path]) -> None:
    dirs = resolve_model_dirs(
        embedding_dir=model_folders["embedding"],
        reranker_dir=model_folders["reranker"],
        asset_s3_uri="s3://nowhere/never.zip",
        s3_client=object(),  # any call on it would fail
    )
    assert dirs.embedding == model_folders["embedding"]
    assert dirs.reranker == model_folders["reranker"]


def test_asset_is_downloaded_once_and_models_load_from_it(
    s3: CountingS3, model_folders: dict[str, Path], tmp_path: Path
) -> None:
    # Given the asset zip in S3
    s3._client.put_object(Bucket=BUCKET, Key=KEY, Body=_zip_of(model_folders))
    cache = tmp_path / "cache"
    # When resolved twice (two invocations of a warm container)
    first = resolve_model_dirs(asset_s3_uri=URI, s3_client=s3, cache_root=cache)
    second = resolve_model_dirs(asset_s3_uri=URI, s3_client=s3, cache_root=cache)
    # Then it was downloaded once, nothing else is left behind, and the models load
    assert s3.downloads == 1
    assert first == second
    assert [p.name for p in cache.iterdir()] == [first.embedding.parent.name]
    assert first.reranker is not None
    assert OnnxEmbedder(first.embedding).embed(["qdrant"]).shape == (1, 384)
    assert len(OnnxCrossEncoder(first.reranker).score("qdrant", ["rust", "qdrant"])) == 2


def test_a_local_embedding_folder_with_the_reranker_from_s3(
    s3: CountingS3, model_folders: dict[str, Path], tmp_path: Path
) -> None:
    s3._client.put_object(Bucket=BUCKET, Key=KEY, Body=_zip_of(model_folders))
    dirs = resolve_model_dirs(
        embedding_dir=model_folders["embedding"],
        asset_s3_uri=URI,
        s3_client=s3,
        cache_root=tmp_path / "cache",
    )
    assert dirs.embedding == model_folders["embedding"]
    assert dirs.reranker is not None
    assert dirs.reranker.name == "reranker"


def test_a_failed_download_leaves_nothing_half_written(s3: CountingS3, tmp_path: Path) -> None:
    # Given a URI whose object does not exist
    cache = tmp_path / "cache"
    # When resolved, Then a clear error names the URI and the cache holds nothing
    with pytest.raises(ModelAssetError, match=r"cannot download s3://model-assets/missing\.zip"):
        fetch_asset(f"s3://{BUCKET}/missing.zip", s3_client=s3, cache_root=cache)
    assert list(cache.iterdir()) == []


def test_an_asset_without_embedding_folder_is_refused_and_not_kept(
    s3: CountingS3, model_folders: dict[str, Path], tmp_path: Path
) -> None:
    s3._client.put_object(
        Bucket=BUCKET, Key=KEY, Body=_zip_of({"reranker": model_folders["reranker"]})
    )
    cache = tmp_path / "cache"
    with pytest.raises(ModelAssetError, match="no embedding/ folder"):
        resolve_model_dirs(asset_s3_uri=URI, s3_client=s3, cache_root=cache)
    assert list(cache.iterdir()) == []


def test_zip_entries_escaping_the_folder_are_refused(
    s3: CountingS3, model_folders: dict[str, Path], tmp_path: Path
) -> None:
    evil = _zip_of(model_folders, extra={"../../evil.txt": b"x"})
    s3._client.put_object(Bucket=BUCKET, Key=KEY, Body=evil)
    with pytest.raises(ModelAssetError, match="escapes"):
        fetch_asset(URI, s3_client=s3, cache_root=tmp_path / "cache")
    assert not (tmp_path / "evil.txt").exists()


def test_not_a_zip_is_a_clear_error(s3: CountingS3, tmp_path: Path) -> None:
    s3._client.put_object(Bucket=BUCKET, Key=KEY, Body=b"not a zip")
    with pytest.raises(ModelAssetError, match="not a zip"):
        fetch_asset(URI, s3_client=s3, cache_root=tmp_path / "cache")


@pytest.mark.parametrize("uri", ["https://bucket/key.zip", "s3://bucket", "s3:///key.zip"])
def test_bad_uris_are_refused(uri: str, tmp_path: Path) -> None:
    with pytest.raises(ModelAssetError, match=r"s3://bucket/key\.zip"):
        fetch_asset(uri, s3_client=object(), cache_root=tmp_path)


def test_nothing_configured_says_what_to_set() -> None:
    with pytest.raises(ModelAssetError, match="EMBEDDING_MODEL_DIR or MODEL_ASSET_S3_URI"):
        resolve_model_dirs()


def test_reranker_can_be_left_out(model_folders: dict[str, Path]) -> None:
    dirs = resolve_model_dirs(embedding_dir=model_folders["embedding"], need_reranker=False)
    assert dirs.reranker is None
