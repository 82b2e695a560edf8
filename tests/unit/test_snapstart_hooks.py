"""SnapStart hooks, run in-process the way the Lambda Web Adapter runs them.

AWS: a snapshot is taken after init and every restored environment resumes from it, so network
connections opened during init are stale after a restore and state seeded at init (random
generators) is shared by every restored environment; re-create them after restore
(https://docs.aws.amazon.com/lambda/latest/dg/snapstart-uniqueness.html, and "Network
connections" in https://docs.aws.amazon.com/lambda/latest/dg/snapstart-best-practices.html).
The adapter POSTs to AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH before the snapshot and to
AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH after a restore, expecting a 2xx (aws/aws-lambda-web-adapter
`docs/src/features/snapstart.md`).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from fastapi.testclient import TestClient

from rag import wiring
from web import snapstart
from web.app import create_app

ENV = {"LLM_URL": "http://127.0.0.1:9", "QDRANT_PATH": ":memory:"}


class CountingModel:
    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: Any) -> list[list[float]]:
        self.calls += 1
        return [[0.0] for _ in texts]

    def score(self, query: str, passages: Any) -> list[float]:
        self.calls += 1
        return [0.0 for _ in passages]


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Fresh wiring state; models are counters and each client build makes new objects."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(wiring, "_deps", None)
    monkeypatch.setattr(wiring, "_models", None)
    models = {"embedder": CountingModel(), "reranker": CountingModel()}
    builds = itertools.count(1)
    state: dict[str, Any] = {"models": models, "client_builds": 0, "fail": False}

    def build_clients(settings: Any) -> tuple[Any, Any, Any]:
        if state["fail"]:
            raise ConnectionError("secret unreachable")
        state["client_builds"] = next(builds)
        return object(), object(), object()

    monkeypatch.setattr(wiring, "_load_models", lambda s: (models["embedder"], models["reranker"]))
    monkeypatch.setattr(wiring, "_build_clients", build_clients)
    return state


def _client(environ: dict[str, str]) -> TestClient:
    app = create_app(wiring.get_deps)
    snapstart.add_hooks(
        app, environ, before_snapshot=wiring.before_snapshot, after_restore=wiring.after_restore
    )
    return TestClient(app)


def test_before_snapshot_builds_everything_and_runs_each_model_once(world: dict[str, Any]) -> None:
    client = _client(snapstart.HOOK_PATHS)
    answer = client.post(snapstart.HOOK_PATHS[snapstart.BEFORE_SNAPSHOT_ENV])
    assert answer.status_code == 204
    assert wiring._deps is not None  # in the snapshot: settings, models, clients
    assert world["models"]["embedder"].calls == 1
    assert world["models"]["reranker"].calls == 1


def test_after_restore_renews_every_network_client_and_keeps_the_models(
    world: dict[str, Any],
) -> None:
    client = _client(snapstart.HOOK_PATHS)
    client.post(snapstart.HOOK_PATHS[snapstart.BEFORE_SNAPSHOT_ENV])
    snapshotted = wiring.get_deps()

    answer = client.post(snapstart.HOOK_PATHS[snapstart.AFTER_RESTORE_ENV])

    assert answer.status_code == 204
    restored = wiring.get_deps()
    assert world["client_builds"] == 2
    assert restored.store is not snapshotted.store
    assert restored.llm is not snapshotted.llm
    assert restored.sink is not snapshotted.sink  # its sampling generator is seeded anew too
    assert restored.embedder is snapshotted.embedder
    assert restored.reranker is snapshotted.reranker
    assert restored.settings is snapshotted.settings


def test_a_failed_restore_answers_non_2xx_so_no_traffic_reaches_stale_clients(
    world: dict[str, Any],
) -> None:
    client = TestClient(_client(snapstart.HOOK_PATHS).app, raise_server_exceptions=False)
    client.post(snapstart.HOOK_PATHS[snapstart.BEFORE_SNAPSHOT_ENV])
    world["fail"] = True
    answer = client.post(snapstart.HOOK_PATHS[snapstart.AFTER_RESTORE_ENV])
    assert not 200 <= answer.status_code < 300


def test_a_restore_before_anything_was_built_leaves_the_first_request_to_build(
    world: dict[str, Any],
) -> None:
    client = _client(snapstart.HOOK_PATHS)
    assert client.post(snapstart.HOOK_PATHS[snapstart.AFTER_RESTORE_ENV]).status_code == 204
    assert world["client_builds"] == 0
    assert wiring._deps is None


def test_hooks_exist_only_where_the_adapter_guards_them(world: dict[str, Any]) -> None:
    # The adapter answers 403 to outside requests only for configured hook paths; without the
    # variables (SnapStart off, or local mode with no adapter) the routes must not exist.
    client = _client({})
    for path in snapstart.HOOK_PATHS.values():
        assert client.post(path).status_code == 404
    assert world["client_builds"] == 0
