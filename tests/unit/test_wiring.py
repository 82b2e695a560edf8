"""rag.wiring's early model start (web/main.py calls `start_models` before importing FastAPI).

Lambda runs the init code once per execution environment before the first invoke, and the Lambda
Web Adapter starts the web app during that init phase and waits for its readiness check
(docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html "Init phase";
awslabs/aws-lambda-web-adapter README "Readiness Check"): the models started there must be the
ones the first request uses, loaded once, and a failed start must not stick.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from rag import wiring

ENV = {"LLM_URL": "http://127.0.0.1:9", "QDRANT_PATH": ":memory:"}


@pytest.fixture
def fake_wiring(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Fresh module state; models and clients replaced by recorders (no ONNX, no Qdrant)."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(wiring, "_deps", None)
    monkeypatch.setattr(wiring, "_models", None)
    calls: dict[str, Any] = {"loads": [], "fail": 0, "release": threading.Event()}

    def load(settings: Any) -> tuple[Any, None]:
        calls["loads"].append(threading.current_thread().name)
        calls["release"].wait(5)
        if calls["fail"]:
            calls["fail"] -= 1
            raise OSError("model archive unreachable")
        return object(), None

    monkeypatch.setattr(wiring, "_load_models", load)
    monkeypatch.setattr(wiring, "_build_clients", lambda s: (object(), None, object()))
    return calls


def test_started_models_are_the_ones_the_first_request_gets(fake_wiring: dict[str, Any]) -> None:
    wiring.start_models()
    wiring.start_models()  # a second call (e.g. a re-import) starts nothing more
    assert wiring._models is not None  # began before get_deps, on the side thread
    fake_wiring["release"].set()
    deps = wiring.get_deps()
    assert fake_wiring["loads"] == ["cold-models_0"]
    assert wiring.get_deps() is deps
    assert fake_wiring["loads"] == ["cold-models_0"]


def test_a_failed_start_surfaces_once_then_the_next_request_retries(
    fake_wiring: dict[str, Any],
) -> None:
    fake_wiring["fail"] = 1
    fake_wiring["release"].set()
    wiring.start_models()
    with pytest.raises(OSError, match="unreachable"):
        wiring.get_deps()
    assert wiring.get_deps().embedder is not None
    assert len(fake_wiring["loads"]) == 2


def test_bad_settings_at_start_are_reported_by_get_deps(
    fake_wiring: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORT_THREADS", "0")  # below its minimum of 1
    wiring.start_models()  # init must not die here: the lifespan logs, the request answers 500
    assert wiring._models is None
    with pytest.raises(ValueError, match="ORT_THREADS"):
        wiring.get_deps()
