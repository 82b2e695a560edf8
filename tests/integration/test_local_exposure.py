"""What the local server accepts from a developer's browser and network, over real HTTP.

A web page the developer visits can send requests to 127.0.0.1: with its own name rebound to
127.0.0.1 (DNS rebinding, the request's Host is then the page's name), or cross-origin with a
body type that needs no preflight (Fetch standard, https://fetch.spec.whatwg.org/#cors-safelisted-request-header:
only application/x-www-form-urlencoded, multipart/form-data and text/plain, or no Content-Type
at all, skip the preflight). The server (uvicorn + the Lambda's app behind LocalGateway, in
this process) must refuse those, answer the preflight of a configured origin as API Gateway's
MOCK OPTIONS method does, and refuse to listen beyond loopback without an API key.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.fakes.memory import FakeWorld, fake_world
from tools.local_server import EXIT_CONFIG, LocalServer, local_app

REPO = Path(__file__).resolve().parents[2]
CONFIGURED_ORIGIN = "http://localhost:5173"
API_KEY = "exposure-test-key"
START_GUARD_S = 120.0
"""Fails a server that never exits instead of hanging the suite; not a speed assertion."""


def raw_request(
    url: str, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly these headers (httpx would add a Content-Type or fix Host)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        if body:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def error_of(status: int, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    assert headers["content-type"].startswith("application/json")
    parsed = json.loads(body)
    assert set(parsed) == {"error"} and set(parsed["error"]) == {"code", "message"}
    return status, parsed["error"]["code"]


@pytest.fixture
def world() -> FakeWorld:
    return fake_world(env={"CORS_ORIGINS": CONFIGURED_ORIGIN})


@pytest.fixture
def server(world: FakeWorld) -> Iterator[LocalServer]:
    with LocalServer(local_app(world.deps, allowed_hosts={"twin.lan"})) as running:
        yield running


def host_of(server: LocalServer) -> str:
    return server.url.removeprefix("http://")


QUERY = json.dumps({"query": "RAG", "expand": False}).encode()


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8000", "10.0.0.5", ""])
def test_a_foreign_host_is_refused_with_421(server: LocalServer, host: str) -> None:
    """DNS rebinding: the page's name now resolves to 127.0.0.1, so its requests reach this
    server with `Host: attacker.example`. RFC 9110 15.5.20 (421 Misdirected Request)."""
    headers = {"Host": host, "Content-Type": "application/json"}

    got = raw_request(server.url, "POST", "/retrieve", headers, QUERY)

    assert error_of(*got) == (421, "misdirected_request")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "twin.lan"])
def test_loopback_and_configured_hosts_are_served(server: LocalServer, host: str) -> None:
    port = server.url.rsplit(":", 1)[1]
    headers = {"Host": f"{host}:{port}", "Content-Type": "application/json"}

    status, _, body = raw_request(server.url, "POST", "/retrieve", headers, QUERY)

    assert status == 200, body
    assert json.loads(body)["chunks"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_post_that_needs_no_preflight_is_refused_with_415(
    server: LocalServer, world: FakeWorld, content_type: str | None
) -> None:
    """No Content-Type (a Blob or ArrayBuffer body) or a CORS-safelisted one reaches a server
    without a preflight; JSON (application/json, +json) always needs one."""
    headers = {"Host": host_of(server)}
    if content_type is not None:
        headers["Content-Type"] = content_type

    got = raw_request(server.url, "POST", "/rag", headers, QUERY)

    assert error_of(*got) == (415, "unsupported_media_type")
    assert world.llm is not None
    assert world.llm.calls == []  # no LLM time spent


@pytest.mark.parametrize("origin", ["https://attacker.example", "null", "http://localhost:1"])
def test_a_foreign_origin_is_refused_with_403(server: LocalServer, origin: str) -> None:
    headers = {"Host": host_of(server), "Origin": origin, "Content-Type": "application/json"}

    got = raw_request(server.url, "POST", "/retrieve", headers, QUERY)

    assert error_of(*got) == (403, "forbidden")


@pytest.mark.parametrize("origin", ["own", CONFIGURED_ORIGIN])
def test_its_own_pages_and_configured_origins_are_served(server: LocalServer, origin: str) -> None:
    origin = server.url if origin == "own" else origin
    headers = {"Host": host_of(server), "Origin": origin, "Content-Type": "application/json"}

    status, got, body = raw_request(server.url, "POST", "/retrieve", headers, QUERY)

    assert status == 200, body
    if origin == CONFIGURED_ORIGIN:  # a same-origin answer needs no CORS header to be read
        assert got["access-control-allow-origin"] == origin
        assert "Origin" in got["vary"]


def test_the_preflight_of_a_configured_origin_is_answered_like_api_gateways(
    server: LocalServer,
) -> None:
    """A JSON POST with x-api-key is preflighted (OPTIONS + Access-Control-Request-Method,
    https://fetch.spec.whatwg.org/#cors-preflight-fetch); API Gateway's OPTIONS method answers
    it without an API key (https://docs.aws.amazon.com/apigateway/latest/developerguide/how-to-cors.html)."""
    headers = {
        "Host": host_of(server),
        "Origin": CONFIGURED_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key",
    }

    status, got, _ = raw_request(server.url, "OPTIONS", "/rag", headers)

    assert status == 204
    assert got["access-control-allow-origin"] == CONFIGURED_ORIGIN
    assert "POST" in got["access-control-allow-methods"].split(",")
    allowed = {h.lower() for h in got["access-control-allow-headers"].split(",")}
    assert {"content-type", "x-api-key"} <= allowed


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b'{"query": "\\ud800"}', "application/json", "lone surrogate"),
        (
            b'{"query": "q", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            "application/vnd.api+json",
            "nested too deeply",
        ),
    ],
    ids=["lone-surrogate", "deep-nesting"],
)
def test_unservable_json_over_http_is_a_traced_400(
    server: LocalServer, world: FakeWorld, body: bytes, content_type: str, reason: str
) -> None:
    """I-JSON (RFC 7493 2.1) forbids lone surrogates; RFC 8259 section 9 lets a parser limit
    nesting. Both are the client's error, traced like any rejected request."""
    headers = {"Host": host_of(server), "Content-Type": content_type}

    status, got, raw = raw_request(server.url, "POST", "/rag", headers, body)

    assert error_of(status, got, raw) == (400, "invalid_json")
    assert reason in json.loads(raw)["error"]["message"]
    [event] = world.sink.events
    assert (event["name"], event["metadata"]["status"]) == ("rag", 400)


def test_an_api_key_still_applies_to_allowed_requests(world: FakeWorld) -> None:
    with LocalServer(local_app(world.deps, api_key=API_KEY)) as running:
        without = httpx.post(
            f"{running.url}/retrieve",
            content=QUERY,
            timeout=30,
            headers={"Content-Type": "application/json"},
        )
        with_key = httpx.post(
            f"{running.url}/retrieve",
            content=QUERY,
            timeout=30,
            headers={"Content-Type": "application/json", "x-api-key": API_KEY},
        )

    assert without.status_code == 403
    assert with_key.status_code == 200


def run_main(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith("LOCAL_")}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO / "lambda_src"), str(REPO)])
    return subprocess.run(
        [sys.executable, "-m", "tools.local_server", *args],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=START_GUARD_S,
        check=False,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20"])
def test_listening_beyond_loopback_without_an_api_key_is_refused_at_start(host: str) -> None:
    result = run_main("--host", host, "--port", "0")

    assert result.returncode == EXIT_CONFIG
    assert "LOCAL_API_KEY" in result.stderr
    assert "listening on" not in result.stderr
