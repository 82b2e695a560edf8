"""`make deploy` refuses a moving target: a model on a branch, or an unpinned model lock.

A Hub revision is a branch, a tag or a commit; only a commit hash names fixed content, a branch
such as `main` moves with every push (huggingface_hub "Download files from the Hub", the
`revision` parameter: https://huggingface.co/docs/huggingface_hub/guides/download). So a deploy
from `main` serves whatever the Hub holds that day, and a lock that pins itself on first use
checks the download against the very source it came from.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tools.deploy_guard import OVERRIDE, main

REPO = Path(__file__).resolve().parents[2]
SHA = "0e9e39f249a16976918f6564b8830bc894c89659"


def configs(tmp_path: Path, revision: str) -> Path:
    folder = tmp_path / "model_config"
    folder.mkdir()
    text = (REPO / "model_config" / "twin-llama-3.1-8b.yaml").read_text()
    text = re.sub(r"(?m)^hf_revision: .*$", f"hf_revision: {revision}", text)
    (folder / "twin-llama-3.1-8b.yaml").write_text(text)
    return folder


def lock(tmp_path: Path, *, pinned: bool) -> Path:
    path = tmp_path / "model_assets.json"
    entry = {
        "repo": "sentence-transformers/all-MiniLM-L6-v2",
        "revision": SHA if pinned else "main",
        "files": {"onnx/model.onnx": "ab" * 32 if pinned else None},
    }
    path.write_text(json.dumps({"embedding": entry}))
    return path


def run(tmp_path: Path, *, revision: str, pinned: bool, override: bool = False) -> int:
    argv = ["--model", "twin-llama-3.1-8b", *(["--allow-unpinned"] if override else [])]
    return main(argv, config_dir=configs(tmp_path, revision), lock=lock(tmp_path, pinned=pinned))


def test_a_branch_revision_is_refused_naming_the_override(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, revision="main", pinned=True) == 2
    err = capsys.readouterr().err
    assert "hf_revision 'main' is a branch" in err and "make pin MODEL=twin-llama-3.1-8b" in err
    assert OVERRIDE in err


def test_an_unpinned_lock_is_refused_naming_the_override(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, revision=SHA, pinned=False) == 2
    err = capsys.readouterr().err
    assert "model_assets.json" in err and "not pinned" in err and OVERRIDE in err


def test_pinned_model_and_lock_pass(tmp_path: Path) -> None:
    assert run(tmp_path, revision=SHA, pinned=True) == 0


def test_the_explicit_override_deploys_a_moving_target_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, revision="main", pinned=False, override=True) == 0
    assert "moving target" in capsys.readouterr().err


def test_make_deploy_runs_the_guard_before_fetching_models_or_deploying(tmp_path: Path) -> None:
    # Given the shipped config (hf_revision: main) and an installed environment
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    # When `make deploy` is dry-run, Then the guard comes before the model fetch and cdk deploy
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", "deploy"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    order = [
        next(i for i, line in enumerate(lines) if marker in line)
        for marker in ("tools.deploy_guard", "tools.fetch_models", "cdk deploy")
    ]
    assert order == sorted(order), done.stdout
