"""Trace redaction on real pipeline events, through the real sink chain, for every mode.

The events come from `pipeline.answer` / `pipeline.retrieve` (fakes only for the LLM, the
embedder and the store), and go through the sink the settings build (`build_sink`: sampling and
redaction, then the JSONL file the local server writes); the test reads the file back.

The keyed digest is HMAC-SHA256 (RFC 2104; Python's `hmac` module): without the key, a digest of
a short or common query cannot be checked against guesses, unlike a plain SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.fakes.memory import ScriptedLLM, fake_world
from rag.adapters.trace_sinks import build_sink
from rag.domain import pipeline
from rag.domain.models import RagRequest, RetrieveRequest
from rag.domain.prompt import sanitize_text
from rag.settings import Settings, SettingsError

# A query whose sanitised form (the one placed in the prompt) differs from what was sent: CRLF
# becomes LF and the control character goes.
QUERY = "What did Paul Iusztin write about zephyrquill\r\nretrieval\x07 budgets?"
PARAPHRASES = ["zephyrquill budgets in Paul Iusztin's retrieval", "Iusztin on zephyrquill costs"]
AUTHOR = "Paul Iusztin"
ANSWER = f"You asked: {QUERY}. Paul Iusztin thinks zephyrquill budgets matter."
# Every text the user's words can reach the trace through (the query itself, the form placed in
# the prompt, paraphrases, the author taken from the query, the answer echoing it).
DERIVED = ["zephyrquill", "Iusztin", sanitize_text(QUERY)]


def chat_or_alpaca(prompt_format: str) -> dict[str, str]:
    profile = {
        "name": "m",
        "model_id": "example/m",
        "revision": "0123456789abcdef0123456789abcdef01234567",
        "prompt_format": prompt_format,
        "max_input_tokens": 2048,
        "max_total_tokens": 4096,
        "generation": {
            "max_new_tokens": 256,
            "max_new_tokens_limit": 1024,
            "temperature": 0.7,
            "top_p": 0.9,
        },
    }
    return {"MODEL_PROFILE": json.dumps(profile)}


def llm() -> ScriptedLLM:
    return ScriptedLLM(
        self_query=json.dumps({"author_full_name": AUTHOR}),
        query_expansion=json.dumps({"queries": PARAPHRASES}),
        generate=ANSWER,
    )


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def traced(
    tmp_path: Path, mode: str, route: str, prompt_format: str = "alpaca"
) -> list[dict[str, Any]]:
    """Two identical requests through the pipeline and the sink the settings build."""
    env = {
        **chat_or_alpaca(prompt_format),
        "TRACE_REDACTION": mode,
        "TRACE_FILE": str(tmp_path / "traces.jsonl"),
        "TRACE_HASH_KEY_FILE": str(tmp_path / "key" / "trace-hash.key"),
        "EXPANSION_N": "3",
        # The scripted helpers answer at once; a loaded machine must not turn that into a
        # fallback (no author filter, no paraphrases) that the assertions would misread.
        "LLM_HELPER_TIMEOUT_S": "60",
    }
    settings = Settings.from_env(env)
    world = fake_world(env=env, llm=llm(), sink=build_sink(settings))
    for _ in range(2):
        if route == "rag":
            pipeline.answer(RagRequest(query=QUERY, k=3), world.deps)
        else:
            pipeline.retrieve(RetrieveRequest(query=QUERY, k=3), world.deps)
    lines = (tmp_path / "traces.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def leaks(event: dict[str, Any]) -> list[str]:
    return [text for text in strings(event) for part in DERIVED if part in text]


ROUTES = [("rag", "alpaca"), ("rag", "chat"), ("retrieve", "alpaca")]


@pytest.mark.parametrize(("route", "prompt_format"), ROUTES)
def test_no_redaction_keeps_the_query_everywhere_it_goes(
    tmp_path: Path, route: str, prompt_format: str
) -> None:
    # Given no redaction, When a request is traced
    event, _ = traced(tmp_path, "none", route, prompt_format)

    # Then the query and what came from it are there (so the leak checks below can see them)
    assert event["input"]["query"] == QUERY
    assert event["metadata"]["author_filter"] == AUTHOR
    assert leaks(event)


@pytest.mark.parametrize(("route", "prompt_format"), ROUTES)
def test_hash_query_leaves_no_text_derived_from_the_query(
    tmp_path: Path, route: str, prompt_format: str
) -> None:
    # Given hash_query, When the same request is traced twice
    first, second = traced(tmp_path, "hash_query", route, prompt_format)

    # Then nothing derived from the query is left anywhere: input, output (expanded queries,
    # answer), span inputs and outputs (paraphrases, self-query author, prompt), metadata
    assert leaks(first) == []
    # And the query is a keyed digest: HMAC-SHA256 under the key file's key, not plain SHA-256
    key = (tmp_path / "key" / "trace-hash.key").read_bytes().strip()
    expected = "hmac-sha256:" + hmac.new(key, QUERY.encode(), hashlib.sha256).hexdigest()
    assert first["input"]["query"] == expected
    assert hashlib.sha256(QUERY.encode()).hexdigest() not in json.dumps(first)
    # And equal values give equal digests, so identical queries still group together
    assert second["input"]["query"] == first["input"]["query"]
    assert first["metadata"]["author_filter"] == second["metadata"]["author_filter"]
    assert first["metadata"]["author_filter"].startswith("hmac-sha256:")
    # And ids, scores, timings and labels stay readable
    assert first["metadata"]["redaction"] == "hash_query"
    assert first["metadata"]["model_id"] == "example/m"
    assert first["input"]["k"] == 3
    assert [s["name"] for s in first["spans"]] == [s["name"] for s in second["spans"]]
    sources = first["output"]["sources" if route == "rag" else "chunks"]
    assert sources and all(isinstance(s["score"], float) for s in sources)


@pytest.mark.parametrize(("route", "prompt_format"), ROUTES)
def test_drop_texts_leaves_no_text_and_no_digest(
    tmp_path: Path, route: str, prompt_format: str
) -> None:
    # Given drop_texts, When a request is traced
    event, _ = traced(tmp_path, "drop_texts", route, prompt_format)

    # Then no text derived from the query remains, author names taken from it included
    assert leaks(event) == []
    assert "author_filter" not in event["metadata"]
    assert "hmac-sha256:" not in json.dumps(event)
    # And what a reader needs to follow the request stays
    assert event["metadata"]["author_source"] == "self_query"
    assert event["input"]["k"] == 3
    sources = event["output"]["sources" if route == "rag" else "chunks"]
    assert sources and all(set(s) == {"id", "collection", "score"} for s in sources)


def test_the_local_key_file_is_created_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    # Given no key file yet
    key_file = tmp_path / "key" / "trace-hash.key"
    env = {"TRACE_REDACTION": "hash_query", "TRACE_HASH_KEY_FILE": str(key_file)}

    # When the key is read twice
    first = Settings.from_env(env).trace_hash_key()
    second = Settings.from_env(env).trace_hash_key()

    # Then it was made once, random (256 bits), mode 0600
    assert first is not None and first == second and len(first) >= 32
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600


def test_the_aws_key_comes_from_the_named_secret(tmp_path: Path) -> None:
    # Given the secret name the stack sets, When the key is read
    asked: list[str] = []

    def fetch(name: str) -> str:
        asked.append(name)
        return "k" * 64

    key = Settings.from_env(
        {"TRACE_REDACTION": "hash_query", "TRACE_HASH_KEY_SECRET": "arn:secret:trace"}
    ).trace_hash_key(fetch)

    # Then it is the secret's value, read from that secret
    assert key == b"k" * 64 and asked == ["arn:secret:trace"]


def test_hash_query_without_a_key_is_a_clear_settings_error() -> None:
    with pytest.raises(SettingsError, match=r"TRACE_HASH_KEY_SECRET.*TRACE_HASH_KEY_FILE"):
        Settings.from_env({"TRACE_REDACTION": "hash_query"}).trace_hash_key()


def test_hash_query_with_traces_off_needs_no_key_and_sends_nothing() -> None:
    """Deployed without Opik the Lambda gets no trace queue and no key secret (nothing is
    sent, so nothing needs keying): TRACE_REDACTION=hash_query must not fail the cold start."""
    settings = Settings.from_env({"TRACE_REDACTION": "hash_query"})
    with pytest.raises(ValueError, match="needs a key"):
        settings.trace_hash_key()  # a sink that sends would need one
    sink = build_sink(settings)
    sink.send({"input": {"query": QUERY}})  # discarded, not an error
    assert type(sink).__name__ == "_DiscardSink"
