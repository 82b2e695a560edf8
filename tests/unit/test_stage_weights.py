"""`make stage-weights`: the pinned commit's files from the Hub to S3, verified (fake Hub + moto).

Why S3: CloudFormation resolves a `{{resolve:secretsmanager:...}}` reference into the model's
container environment, and `sagemaker:DescribeModel` returns that environment
(https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_DescribeModel.html,
PrimaryContainer.Environment), so an HF token given to TGI is readable by anyone allowed to
describe the model. Weights staged in S3 need no token at run time.

The Hub's model info lists each file with its git blob id and, for LFS files, the sha256 of the
content (huggingface_hub `model_info(files_metadata=True)`: `RepoSibling.blob_id`, `.lfs.sha256`);
S3 verifies an upload against the checksum the client sends with ChecksumAlgorithm SHA256
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devkit.fakes.fake_hub import (
    GRANTED_TOKEN,
    LLAMA_31_8B_CONFIG,
    SHARD_STAND_IN_BYTES,
    FakeHub,
    FakeRepo,
    bf16,
    fake_sha,
    serve,
)
from stacks.config import ModelConfig, load_model_config
from tools.stage_weights import SHA256_METADATA, StageError, stage_weights

REPO = "example/gated-tiny"
SHA = fake_sha(REPO)
BUCKET = "weights-bucket"


class TamperedRepo(FakeRepo):
    """Serves other bytes than the Hub's checksum for the second shard (a corrupted mirror)."""

    def file_bytes(self, sha: str, name: str) -> bytes | None:
        if name == self.shard_name(2):
            return b"x" * SHARD_STAND_IN_BYTES
        return super().file_bytes(sha, name)


def repo(cls: type[FakeRepo] = FakeRepo) -> FakeRepo:
    return cls(
        REPO,
        LLAMA_31_8B_CONFIG,
        bf16(1000),
        gated="manual",
        shard_sizes=[SHARD_STAND_IN_BYTES] * 2,
        granted_tokens={GRANTED_TOKEN},
    )


def config(**overrides: Any) -> ModelConfig:
    base = load_model_config("llama-3.1-8b-instruct").model_dump()
    fields = {
        **base,
        "hf_model_id": REPO,
        "hf_revision": SHA,
        "hf_token_secret_name": None,
        "weights_s3_uri": f"s3://{BUCKET}/llm-weights",
        **overrides,
    }
    return ModelConfig.model_validate(fields)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def objects(s3: Any) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def test_staging_copies_the_pinned_files_verified_and_a_rerun_copies_nothing(s3: Any) -> None:
    # Given a gated repo on the Hub and a config pointing at a bucket
    hub = FakeHub([repo()])
    with serve(hub) as endpoint:
        # When staged with a token allowed to read it, then staged again
        first = stage_weights(config(), s3=s3, endpoint=endpoint, token=GRANTED_TOKEN)
        downloads = [path for path, _ in hub.requests if "/resolve/" in path]
        second = stage_weights(config(), s3=s3, endpoint=endpoint, token=GRANTED_TOKEN)

    # Then config and shards sit under <uri>/<repo>/<commit>/, byte for byte the Hub's, with
    # the sha256 the Hub records for each shard
    prefix = f"llm-weights/{REPO}/{SHA}/"
    shards = [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    stored = objects(s3)
    assert sorted(stored) == sorted(prefix + name for name in ["config.json", *shards])
    for i, name in enumerate(shards, start=1):
        assert stored[prefix + name] == f"{SHA}{i}".encode()
        head = s3.head_object(Bucket=BUCKET, Key=prefix + name)
        assert head["Metadata"][SHA256_METADATA] == hashlib.sha256(f"{SHA}{i}".encode()).hexdigest()
    assert first.prefix == f"s3://{BUCKET}/{prefix}" == config().weights_s3_prefix
    assert sorted(first.copied) == sorted(["config.json", *shards])
    # And the re-run downloaded only the small non-LFS file again, no shard
    assert sorted(second.already_staged) == shards
    later = [path for path, _ in hub.requests if "/resolve/" in path][len(downloads) :]
    assert [p.rsplit("/", 1)[-1] for p in later] == ["config.json"]


def test_a_file_that_does_not_match_the_hub_checksum_is_never_staged(s3: Any) -> None:
    with (
        serve(FakeHub([repo(TamperedRepo)])) as endpoint,
        pytest.raises(StageError, match=r"model-00002-of-00002\.safetensors: checksum"),
    ):
        stage_weights(config(), s3=s3, endpoint=endpoint, token=GRANTED_TOKEN)
    assert not any(key.endswith("model-00002-of-00002.safetensors") for key in objects(s3))


def test_staged_weights_need_a_pinned_commit_and_no_token() -> None:
    with pytest.raises(ValueError, match="commit SHA"):
        config(hf_revision="main")
    with pytest.raises(ValueError, match="exclude each other"):
        config(hf_token_secret_name="llm-twin/hf-token")
