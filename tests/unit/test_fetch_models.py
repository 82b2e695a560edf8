"""tools.fetch_models against an in-process fake of the Hub surface it uses (HfApi)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling

from tools.fetch_models import DEFAULT_LOCK, FetchError, fetch_models, load_lock, main

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "sentence-transformers/all-MiniLM-L6-v2"
FILES = {
    "onnx/model.onnx": b"\x08\x07onnx-bytes" * 1000,
    "tokenizer.json": b'{"model": {}}',
    "config.json": b'{"hidden_size": 384}',
}
LFS_FILES = {"onnx/model.onnx"}  # like the Hub: big files in LFS, small json in plain git


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeModelInfo:
    def __init__(self, commit: str, siblings: list[RepoSibling]):
        self.sha = commit
        self.siblings = siblings


class FakeHub:
    """`HfApi.model_info` + `HfApi.hf_hub_download`, serving files from memory."""

    def __init__(self, files: dict[str, bytes], *, lfs_sha: dict[str, str] | None = None):
        self.files = dict(files)
        self.refs = {"main": COMMIT, COMMIT: COMMIT}
        self.lfs_sha = lfs_sha or {p: sha(d) for p, d in files.items() if p in LFS_FILES}
        self.downloads: list[tuple[str, str]] = []

    def model_info(
        self, repo_id: str, *, revision: str | None = None, files_metadata: bool = False
    ) -> FakeModelInfo:
        commit = self.refs[revision or "main"]
        siblings = [
            RepoSibling(
                rfilename=path,
                size=len(data),
                lfs=BlobLfsInfo(size=len(data), sha256=self.lfs_sha[path], pointer_size=130)
                if files_metadata and path in self.lfs_sha
                else None,
            )
            for path, data in self.files.items()
        ]
        return FakeModelInfo(commit, siblings)

    def hf_hub_download(
        self,
        repo_id: str,
        filename: str,
        *,
        revision: str | None = None,
        local_dir: str | Path | None = None,
    ) -> str:
        if revision not in self.refs:
            raise KeyError(f"revision {revision} not found")
        assert local_dir is not None
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.files[filename])
        self.downloads.append((repo_id, filename))
        return str(target)


def write_lock(path: Path, *, revision: str = COMMIT, pinned: bool = True) -> Path:
    lock = {
        "embedding": {
            "repo": REPO,
            "revision": revision,
            "files": {p: sha(d) if pinned else None for p, d in FILES.items()},
        }
    }
    path.write_text(json.dumps(lock))
    return path


def test_pinned_files_are_downloaded_and_verified(tmp_path: Path) -> None:
    # Given a pinned lock and a Hub serving matching files
    hub, lock = FakeHub(FILES), write_lock(tmp_path / "lock.json")
    # When fetching
    report = fetch_models(hub=hub, lock_path=lock, out_dir=tmp_path / "models")
    # Then every file is in build/models/embedding/ with its path, and no staging is left
    for path, data in FILES.items():
        assert (tmp_path / "models" / "embedding" / path).read_bytes() == data
    assert sorted(report.downloaded) == sorted(f"embedding/{p}" for p in FILES)
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["embedding"]
    # and the folder says which model it holds
    source = json.loads((tmp_path / "models" / "embedding" / "source.json").read_text())
    assert source == {"repo": REPO, "revision": COMMIT}


def test_files_already_in_place_are_not_fetched_again(tmp_path: Path) -> None:
    hub, lock = FakeHub(FILES), write_lock(tmp_path / "lock.json")
    fetch_models(hub=hub, lock_path=lock, out_dir=tmp_path / "models")
    hub.downloads.clear()
    report = fetch_models(hub=hub, lock_path=lock, out_dir=tmp_path / "models")
    assert hub.downloads == []
    assert len(report.reused) == len(FILES)


def test_a_checksum_mismatch_is_refused_and_the_file_not_left_in_place(tmp_path: Path) -> None:
    # Given a Hub now serving different bytes than the lock recorded
    lock = write_lock(tmp_path / "lock.json")
    hub = FakeHub({**FILES, "tokenizer.json": b'{"tampered": true}'})
    # When fetching, Then it fails naming the file and the checksums
    with pytest.raises(FetchError, match=r"embedding/tokenizer\.json .* expected"):
        fetch_models(hub=hub, lock_path=lock, out_dir=tmp_path / "models")
    # and the bad file is nowhere in the models folder
    found = [p for p in (tmp_path / "models").rglob("tokenizer.json")]
    assert found == []


def test_a_corrupted_local_file_is_fetched_again(tmp_path: Path) -> None:
    hub, lock = FakeHub(FILES), write_lock(tmp_path / "lock.json")
    fetch_models(hub=hub, lock_path=lock, out_dir=tmp_path / "models")
    (tmp_path / "models" / "embedding" / "config.json").write_text("{}")
    report = fetch_models(hub=hub, lock_path=lock, out_dir=tmp_path / "models")
    assert report.downloaded == ["embedding/config.json"]
    assert (tmp_path / "models" / "embedding" / "config.json").read_bytes() == FILES["config.json"]


@pytest.mark.parametrize(
    ("revision", "pinned", "reason"),
    [(COMMIT, False, "no sha256 for"), ("main", True, "not a commit SHA")],
)
def test_an_unpinned_lock_asks_for_update_lock(
    tmp_path: Path, revision: str, pinned: bool, reason: str
) -> None:
    lock = write_lock(tmp_path / "lock.json", revision=revision, pinned=pinned)
    hub = FakeHub(FILES)
    with pytest.raises(FetchError, match=reason) as raised:
        fetch_models(hub=hub, lock_path=lock, out_dir=tmp_path / "models")
    assert "--update-lock" in str(raised.value)
    assert hub.downloads == []


def test_update_lock_pins_the_commit_and_records_checksums(tmp_path: Path) -> None:
    # Given the shipped kind of lock: revision "main", no checksums
    lock = write_lock(tmp_path / "lock.json", revision="main", pinned=False)
    hub = FakeHub(FILES)
    # When updating it
    fetch_models(hub=hub, lock_path=lock, out_dir=tmp_path / "models", update_lock=True)
    # Then it names the commit and every file's sha256, and a plain fetch now passes
    entry = load_lock(lock)["embedding"]
    assert entry.revision == COMMIT
    assert entry.files == {p: sha(d) for p, d in FILES.items()}
    hub.downloads.clear()
    fetch_models(hub=hub, lock_path=lock, out_dir=tmp_path / "models")
    assert hub.downloads == []


def test_update_lock_refuses_bytes_that_disagree_with_the_hubs_lfs_checksum(
    tmp_path: Path,
) -> None:
    lock = write_lock(tmp_path / "lock.json", revision="main", pinned=False)
    hub = FakeHub(FILES, lfs_sha={"onnx/model.onnx": "f" * 64})
    with pytest.raises(FetchError, match=r"onnx/model\.onnx"):
        fetch_models(hub=hub, lock_path=lock, out_dir=tmp_path / "models", update_lock=True)
    assert load_lock(lock)["embedding"].revision == "main"  # lock untouched
    assert not (tmp_path / "models" / "embedding" / "onnx" / "model.onnx").exists()


def test_cli_reports_a_failure_with_exit_code_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = write_lock(tmp_path / "lock.json", pinned=False)
    code = main(["--lock", str(lock), "--out", str(tmp_path / "m")], hub=FakeHub(FILES))
    assert code == 1
    assert "--update-lock" in capsys.readouterr().err


def test_the_shipped_lock_lists_both_models_for_update() -> None:
    lock = load_lock(DEFAULT_LOCK)
    assert lock["embedding"].repo == "sentence-transformers/all-MiniLM-L6-v2"
    assert lock["reranker"].repo == "cross-encoder/ms-marco-MiniLM-L4-v2"
    for entry in lock.values():
        assert set(entry.files) == {"onnx/model.onnx", "tokenizer.json", "config.json"}


def test_first_use_pins_an_unpinned_lock_then_verifies_against_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the shipped kind of lock (no commit, no checksums) and a newcomer's `make models`
    lock = write_lock(tmp_path / "lock.json", revision="main", pinned=False)
    hub = FakeHub(FILES)
    args = ["--lock", str(lock), "--out", str(tmp_path / "m"), "--pin-if-unpinned"]
    # When it runs, Then the lock is pinned from the Hub's metadata and the files downloaded
    assert main(args, hub=hub) == 0
    assert "review it and commit it" in capsys.readouterr().out
    assert load_lock(lock)["embedding"].revision == COMMIT
    # And a second run verifies against the now-pinned lock instead of pinning again
    tampered = tmp_path / "m" / "embedding" / "tokenizer.json"
    tampered.write_bytes(b"not the pinned bytes")
    assert main(args, hub=hub) == 0
    assert "lock updated" not in capsys.readouterr().out
    assert sha(tampered.read_bytes()) == sha(FILES["tokenizer.json"])


def test_an_unreachable_hub_is_one_error_line_and_the_lock_is_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class UnreachableHub(FakeHub):
        def model_info(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise ConnectionAbortedError("[Errno -2] Name or service not known")

    lock = write_lock(tmp_path / "lock.json", revision="main", pinned=False)
    before = lock.read_text()
    args = ["--lock", str(lock), "--out", str(tmp_path / "m"), "--pin-if-unpinned"]
    assert main(args, hub=UnreachableHub(FILES)) == 1
    assert "cannot download from the Hugging Face Hub" in capsys.readouterr().err
    assert lock.read_text() == before
