"""Streamed `/rag` end to end over real HTTP: the local server (uvicorn + the Lambda's app, in
this process) in front of the TGI-protocol fake streaming `/generate_stream` with paced tokens.

The contract is DESIGN 3.1 (server-sent events `retrieval`, `token`..., `done` | `error`); the
fake speaks TGI 3.3.6's streaming protocol from its OpenAPI spec (`/generate_stream` answers
`text/event-stream` StreamResponse events, an error during generation is an ErrorResponse
event; docs/contracts/tgi-openapi.json). SSE framing: https://html.spec.whatwg.org/multipage/server-sent-events.html
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devkit.fakes.memory import FakeWorld, fake_world
from devkit.fakes.tgi_server import Fault, TgiServer, fixed
from rag.adapters.llm.http import HttpLLM
from tools.local_server import LocalServer, local_app

ANSWER = "DPO needs no separate reward model: the policy's log-ratio plays that role."
LEAKY = "Short answer. ### Instruction: a new section the model should never show"
GUARD_POLLS = 600
"""Bounds a wait for the fake to notice a hang-up; not a speed assertion."""


def sse_events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event name, decoded data) per event; comments (keep-alives) as ("", None)."""
    name, data = "", []
    for line in response.iter_lines():
        if line.startswith(":"):
            yield "", None
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and (name or data):
            yield name, json.loads("\n".join(data))
            name, data = "", []


def world_for(tgi: TgiServer, **env: str) -> FakeWorld:
    llm = HttpLLM(tgi.url, connect_timeout_s=2, read_timeout_s=10)
    # No helper calls: the fake answers every call with the same text.
    return fake_world(llm=llm, env={"SELF_QUERY_ENABLED": "false", "EXPANSION_N": "1", **env})


@pytest.fixture
def tgi() -> Iterator[TgiServer]:
    with TgiServer(fixed(ANSWER), token_delay_s=0.01) as server:
        yield server


def stream_rag(world: FakeWorld, body: dict[str, Any], **headers: str) -> list[tuple[str, Any]]:
    with (
        LocalServer(local_app(world.deps)) as server,
        httpx.Client(base_url=server.url) as http,
        http.stream("POST", "/rag", json=body, headers=headers, timeout=60) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [e for e in sse_events(response) if e[0]]


def test_events_come_in_order_and_done_equals_the_buffered_answer(tgi: TgiServer) -> None:
    world = world_for(tgi)
    request = {"query": "Does DPO need a reward model?"}

    events = stream_rag(world, {**request, "stream": True})
    with LocalServer(local_app(world.deps)) as server:
        buffered = httpx.post(f"{server.url}/rag", json=request, timeout=60).json()

    names = [name for name, _ in events]
    assert names[0] == "retrieval" and names[-1] == "done"
    assert set(names[1:-1]) == {"token"}
    retrieval, done = events[0][1], events[-1][1]
    assert retrieval["sources"] == done["sources"] == buffered["sources"]
    assert retrieval["trace_id"] == done["trace_id"]
    assert "".join(data["text"] for name, data in events if name == "token") == ANSWER
    assert set(done) == set(buffered)
    for key in ("answer", "sources", "model"):
        assert done[key] == buffered[key]
    # The stream's last event reports the prompt's real length (StreamDetails.input_length);
    # buffered /generate does not (prefill is only filled on request), so that answer carries
    # the pipeline's estimate, an upper bound.
    assert done["usage"]["completion_tokens"] == buffered["usage"]["completion_tokens"]
    assert 0 < done["usage"]["prompt_tokens"] <= buffered["usage"]["prompt_tokens"]
    assert done["timings_ms"]["time_to_first_token"] > 0
    trace = world.sink.events[0]
    assert trace["input"]["stream"] is True
    assert trace["metadata"]["time_to_first_token_ms"] > 0
    assert trace["metadata"]["tokens_per_second"] > 0


def test_tokens_reach_the_client_while_the_model_is_still_generating(tgi: TgiServer) -> None:
    # Given a model that pauses after two tokens, well inside the stall timeout (a pause as long
    # as the timeout would race it: the trace would then say model_stalled)
    tgi.queue(Fault.stream_stall(2, seconds=3))
    world = world_for(tgi, LLM_STREAM_STALL_S="30")
    with LocalServer(local_app(world.deps)) as server, httpx.Client(base_url=server.url) as http:
        body = {"query": "DPO?"}
        with http.stream(
            "POST", "/rag", json=body, headers={"accept": "text/event-stream"}, timeout=60
        ) as response:
            events = sse_events(response)
            got = [next(e for e in events if e[0]) for _ in range(3)]
            # Then both tokens arrived while the model's stream is still open
            assert [name for name, _ in got] == ["retrieval", "token", "token"]
            assert tgi.first_token_sent_s and tgi.streams_closed_early == 0
    # The client left: the model's stream is closed once it sends again; the trace says so
    for _ in range(GUARD_POLLS):
        if world.sink.events:
            break
        tgi._stopping.wait(0.1)
    assert world.sink.events[0]["error"]["code"] == "client_disconnected"


def test_a_client_that_disconnects_closes_the_model_stream(tgi: TgiServer) -> None:
    tgi.token_delay_s = 0.05
    tgi.responder = fixed(" ".join(f"word{i}" for i in range(400)))
    world = world_for(tgi)
    with LocalServer(local_app(world.deps)) as server, httpx.Client(base_url=server.url) as http:
        with http.stream("POST", "/rag", json={"query": "q", "stream": True}, timeout=60) as r:
            events = sse_events(r)
            assert [next(e for e in events if e[0])[0] for _ in range(3)][-1] == "token"
        for _ in range(GUARD_POLLS):
            if tgi.streams_closed_early:
                break
            tgi._stopping.wait(0.1)
    assert tgi.streams_closed_early == 1
    (trace,) = world.sink.events
    assert trace["error"]["code"] == "client_disconnected"
    assert trace["metadata"]["status"] == 499


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault.stream_error(2), "model_error"),
        (Fault.stream_drop(2), "model_connection_lost"),
        (Fault.stream_stall(2, seconds=30), "model_stalled"),
    ],
    ids=["error-event", "dropped-connection", "stall"],
)
def test_a_failure_after_the_first_token_ends_the_stream_with_an_error_event(
    tgi: TgiServer, fault: Fault, code: str
) -> None:
    tgi.queue(fault)
    world = world_for(tgi, LLM_STREAM_STALL_S="0.5")

    events = stream_rag(world, {"query": "DPO?", "stream": True})

    assert [name for name, _ in events] == ["retrieval", "token", "token", "error"]
    assert events[-1][1]["error"]["code"] == code
    assert set(events[-1][1]["error"]) == {"code", "message"}
    assert world.sink.events[0]["error"]["code"] == code


def test_a_stop_sequence_split_across_tokens_never_reaches_the_client(tgi: TgiServer) -> None:
    # The alpaca profile stops at "### Instruction:"; the fake sends it as " ###" + " Instruction:"
    tgi.responder = fixed(LEAKY)
    world = world_for(tgi)

    events = stream_rag(world, {"query": "q", "stream": True})

    text = "".join(data["text"] for name, data in events if name == "token")
    assert text.rstrip() == "Short answer."  # the space before "###" is the answer's own
    assert "#" not in json.dumps(events)
    assert "Instruction" not in json.dumps(events)
    assert events[-1][1]["answer"] == "Short answer."


def test_failures_before_the_first_event_keep_the_plain_status() -> None:
    world = fake_world(llm=None)
    with LocalServer(local_app(world.deps)) as server:
        no_llm = httpx.post(f"{server.url}/rag", json={"query": "q", "stream": True}, timeout=60)
        invalid = httpx.post(f"{server.url}/rag", json={"query": "", "stream": True}, timeout=60)

    assert no_llm.status_code == 503
    assert no_llm.headers["retry-after"] == "300"
    assert no_llm.json()["error"]["code"] == "llm_not_configured"
    assert invalid.status_code == 400
    assert invalid.json()["error"]["code"] == "validation_error"


def test_a_buffered_request_is_unchanged(tgi: TgiServer) -> None:
    world = world_for(tgi)
    with LocalServer(local_app(world.deps)) as server:
        response = httpx.post(f"{server.url}/rag", json={"query": "q"}, timeout=60)

    assert response.headers["content-type"] == "application/json"
    assert response.json()["answer"] == ANSWER
