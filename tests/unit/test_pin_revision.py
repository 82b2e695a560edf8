"""`tools.pin_revision` against the fake Hub, on copies of the shipped configs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.fakes.fake_hub import FakeHub, fake_sha, serve
from stacks.config import CONFIG_DIR, load_model_config
from tools.pin_revision import main, pin
from tools.preflight import HfHub


@pytest.fixture(scope="module")
def hub() -> Iterator[HfHub]:
    with serve(FakeHub()) as url:
        yield HfHub(url)


def _copy(tmp_path: Path, name: str) -> Path:
    return Path(shutil.copy(CONFIG_DIR / f"{name}.yaml", tmp_path / f"{name}.yaml"))


def test_branch_is_replaced_by_its_commit_and_nothing_else_changes(
    tmp_path: Path, hub: HfHub
) -> None:
    # Given the default config, which tracks the branch 'main'
    path = _copy(tmp_path, "twin-llama-3.1-8b")
    before = path.read_text().splitlines()

    # When pinning
    old, sha = pin(path, hub)

    # Then hf_revision holds main's commit and every other line, comments included, is unchanged
    assert (old, sha) == ("main", fake_sha("mlabonne/TwinLlama-3.1-8B-DPO"))
    after = path.read_text().splitlines()
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert changed == [("hf_revision: main", f"hf_revision: {sha}")]
    assert load_model_config(path.stem, tmp_path).revision_pinned


def test_trailing_comment_and_quotes_are_kept(tmp_path: Path, hub: HfHub) -> None:
    # Given a quoted revision with a comment
    path = _copy(tmp_path, "qwen2.5-32b-instruct")
    path.write_text(
        path.read_text().replace("hf_revision: main", 'hf_revision: "main"   # track upstream')
    )

    # When pinning; Then only the value changes
    _, sha = pin(path, hub)
    assert f"hf_revision: {sha}   # track upstream" in path.read_text()


def test_already_pinned_config_is_left_alone(tmp_path: Path, hub: HfHub) -> None:
    path = _copy(tmp_path, "twin-llama-3.1-8b")
    pin(path, hub)
    text = path.read_text()
    assert main(["--model", "twin-llama-3.1-8b", "--config-dir", str(tmp_path)], hub=hub) == 0
    assert path.read_text() == text


def test_unknown_branch_fails_without_touching_the_file(
    tmp_path: Path, hub: HfHub, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _copy(tmp_path, "twin-llama-3.1-8b")
    path.write_text(path.read_text().replace("hf_revision: main", "hf_revision: no-such-branch"))
    text = path.read_text()

    assert main(["--model", "twin-llama-3.1-8b", "--config-dir", str(tmp_path)], hub=hub) == 1
    assert path.read_text() == text
    assert "cannot resolve the revision" in capsys.readouterr().err
