"""Trace sinks: SQS delivery (moto), size trimming, sampling, redaction, local JSONL."""

from __future__ import annotations

import io
import json
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools import Logger
from moto import mock_aws

from devkit.fakes.opik_recorder import make_trace_event
from rag.adapters.trace_sinks import (
    METRIC_SAMPLED_OUT,
    METRIC_SEND_FAILED,
    METRIC_TRIMMED,
    SQS_MAX_MESSAGE_BYTES,
    FanoutSink,
    JsonlTraceSink,
    MemoryTraceSink,
    PolicySink,
    SqsTraceSink,
    build_sink,
    encode_for_sqs,
)
from rag.domain.trace_policy import keyed_digest
from rag.settings import Settings

LOG_STREAM = io.StringIO()
TEST_LOGGER = Logger(service="sinks-test", stream=LOG_STREAM)
KEY = b"0123456789abcdef0123456789abcdef"


def counting(metrics: Counter[str]) -> Callable[[str], None]:
    """A metric callback that counts, standing in for Powertools Metrics.add_metric."""
    return lambda name: metrics.update([name])


def log_lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in LOG_STREAM.getvalue().splitlines()]


@pytest.fixture(autouse=True)
def _clean_log() -> None:
    LOG_STREAM.seek(0)
    LOG_STREAM.truncate()


@pytest.fixture
def sqs() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("sqs", region_name="eu-west-1")


@pytest.fixture
def queue_url(sqs: Any) -> str:
    attributes = {"MaximumMessageSize": str(SQS_MAX_MESSAGE_BYTES)}
    return str(sqs.create_queue(QueueName="traces", Attributes=attributes)["QueueUrl"])


def received(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
    return [json.loads(message["Body"]) for message in messages.get("Messages", [])]


# SQS -----------------------------------------------------------------------------------------


def test_an_event_lands_on_the_queue_as_json(sqs: Any, queue_url: str) -> None:
    # Given an SQS sink on a queue
    metrics: Counter[str] = Counter()
    sink = SqsTraceSink(queue_url, client=sqs, count_metric=counting(metrics), logger=TEST_LOGGER)
    event = make_trace_event()

    # When a trace event is sent
    sink.send(event)

    # Then the queue holds exactly that event, and nothing was counted as a failure
    assert received(sqs, queue_url) == [event]
    assert metrics == Counter()


def test_an_sqs_failure_is_logged_and_counted_and_never_raised(sqs: Any) -> None:
    # Given a sink whose queue does not exist (SQS answers with an error)
    metrics: Counter[str] = Counter()
    missing = "https://sqs.eu-west-1.amazonaws.com/123456789012/no-such-queue"
    sink = SqsTraceSink(missing, client=sqs, count_metric=counting(metrics), logger=TEST_LOGGER)
    event = make_trace_event(query="my secret question")

    # When the request path sends its trace
    sink.send(event)  # returns normally: the answer is unaffected

    # Then one failure is counted and one warning logged, with no event content in it
    assert metrics == Counter({METRIC_SEND_FAILED: 1})
    [line] = log_lines()
    assert line["level"] == "WARNING"
    assert line["message"] == "trace event not sent to SQS"
    assert line["trace_id"] == event["trace_id"]
    assert line["error_code"] == "AWS.SimpleQueueService.NonExistentQueue"
    assert "my secret question" not in json.dumps(line)


def test_an_oversized_event_is_trimmed_to_fit_and_still_lands(sqs: Any, queue_url: str) -> None:
    # Given an event whose retrieved context alone is 1.5 MiB
    metrics: Counter[str] = Counter()
    sink = SqsTraceSink(queue_url, client=sqs, count_metric=counting(metrics), logger=TEST_LOGGER)
    event = make_trace_event(context="context " * 200_000)
    assert len(json.dumps(event).encode()) > SQS_MAX_MESSAGE_BYTES

    # When it is sent
    sink.send(event)

    # Then a message within SQS's limit lands, marked as trimmed, and the trim is counted
    [landed] = received(sqs, queue_url)
    assert len(json.dumps(landed, ensure_ascii=False, separators=(",", ":")).encode()) <= (
        SQS_MAX_MESSAGE_BYTES
    )
    assert landed["trace_id"] == event["trace_id"]
    assert landed["metadata"]["trimmed"]
    assert metrics == Counter({METRIC_TRIMMED: 1})


def small_limit_event() -> dict[str, Any]:
    return make_trace_event(context="C" * 3000, answer="A" * 500)


def test_trimming_cuts_context_first_with_a_marker_and_keeps_prompt_and_answer() -> None:
    # Given an event over a small limit, where cutting the context is enough
    event = small_limit_event()
    size = len(json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode())
    limit = size - 4000

    # When it is encoded for SQS
    body, trimmed = encode_for_sqs(event, limit)
    out = json.loads(body)

    # Then it fits, the context fields end with the marker, and the list names them
    assert len(body.encode()) <= limit
    chunk = out["spans"][3]["output"]["chunks"][0]["content"]
    assert re.fullmatch(r"C+…\[trimmed \d+ chars\]", chunk)
    assert out["metadata"]["trimmed"] == trimmed
    assert "spans.search.output.chunks.0.content" in trimmed
    assert not any(path.startswith(("spans.prompt.output", "spans.generate")) for path in trimmed)
    # And the prompt and answer are whole
    assert out["spans"][5]["output"] == event["spans"][5]["output"]
    assert out["output"]["answer"] == event["output"]["answer"]
    # And trimming is deterministic
    assert encode_for_sqs(event, limit) == (body, trimmed)


def test_trimming_reaches_the_prompt_and_then_the_answer_only_when_it_must() -> None:
    # Given a limit the event cannot meet by cutting context alone
    event = small_limit_event()

    # When it is encoded for a tight limit
    body_tight, trimmed_tight = encode_for_sqs(event, 4200)

    # Then the prompt was cut after the context, and the answer last
    out = json.loads(body_tight)
    assert len(body_tight.encode()) <= 4200
    first_prompt = next(i for i, p in enumerate(trimmed_tight) if p.startswith("spans.prompt"))
    first_answer = next(i for i, p in enumerate(trimmed_tight) if p == "output.answer")
    last_context = max(i for i, p in enumerate(trimmed_tight) if ".chunks." in p)
    assert last_context < first_prompt < first_answer
    assert "…[trimmed " in out["output"]["answer"]


def test_an_event_that_fits_is_sent_untouched() -> None:
    event = make_trace_event()
    body, trimmed = encode_for_sqs(event, SQS_MAX_MESSAGE_BYTES)
    assert trimmed == []
    assert json.loads(body) == event


# Sampling --------------------------------------------------------------------------------------


def test_sampling_keeps_about_the_rate_and_records_it() -> None:
    # Given a 25 % sampling policy with a seeded generator
    memory = MemoryTraceSink()
    metrics: Counter[str] = Counter()
    sink = PolicySink(
        memory,
        sample_rate=0.25,
        redaction="none",
        rng=random.Random(7),
        count_metric=counting(metrics),
    )

    # When 400 successful requests are traced
    for _ in range(400):
        sink.send(make_trace_event())

    # Then about a quarter are kept, each says its weight, and the dropped ones are counted
    assert 70 <= len(memory.events) <= 130
    assert {event["metadata"]["sample_rate"] for event in memory.events} == {0.25}
    assert metrics[METRIC_SAMPLED_OUT] == 400 - len(memory.events)


def test_errors_are_always_kept_whatever_the_rate() -> None:
    # Given a policy that samples everything out
    memory = MemoryTraceSink()
    sink = PolicySink(memory, sample_rate=0.0, redaction="none", count_metric=lambda _: None)

    # When one failed and one successful request are traced
    failed = make_trace_event(error={"code": "model_error", "message": "TGI returned 424"})
    sink.send(failed)
    sink.send(make_trace_event())

    # Then only the failure is kept
    assert [event["trace_id"] for event in memory.events] == [failed["trace_id"]]


# Redaction -------------------------------------------------------------------------------------


def test_hash_query_replaces_every_text_with_its_keyed_digest() -> None:
    # Given a hash_query policy (tests/unit/test_trace_redaction.py runs real pipeline events)
    memory = MemoryTraceSink()
    sink = PolicySink(
        memory, sample_rate=1, redaction="hash_query", hash_key=KEY, count_metric=lambda _: None
    )
    query = "Where does Maxime live?"
    event = make_trace_event(query=query)

    # When the event is sent
    sink.send(event)

    # Then the query appears nowhere, its keyed digest does, and each expanded query has its own
    [out] = memory.events
    digest = keyed_digest(KEY, query)
    assert out["input"]["query"] == digest
    assert "Maxime" not in json.dumps(out)
    assert out["spans"][5]["input"]["query"] == digest
    assert out["spans"][2]["input"]["queries"][1] == keyed_digest(KEY, f"{query} metrics")
    # And numbers, ids and labels stay
    assert out["input"]["k"] == 3
    assert out["metadata"]["redaction"] == "hash_query"
    # And the caller's event was not modified
    assert event["input"]["query"] == query


def test_hash_query_without_a_key_is_refused() -> None:
    with pytest.raises(ValueError, match="hash key"):
        PolicySink(MemoryTraceSink(), sample_rate=1, redaction="hash_query")


def test_drop_texts_removes_every_text_but_keeps_ids_scores_timings_and_usage() -> None:
    # Given a drop_texts policy
    memory = MemoryTraceSink()
    sink = PolicySink(memory, sample_rate=1, redaction="drop_texts", count_metric=lambda _: None)
    event = make_trace_event(query="QUERY-TEXT", context="CONTEXT-TEXT", answer="ANSWER-TEXT")

    # When the event is sent
    sink.send(event)

    # Then no query, context, prompt or answer text is left anywhere
    [out] = memory.events
    dumped = json.dumps(out)
    for text in ("QUERY-TEXT", "CONTEXT-TEXT", "ANSWER-TEXT", "### Instruction"):
        assert text not in dumped
    # And ids, scores, timings, usage and metadata remain
    chunk = out["spans"][3]["output"]["chunks"][0]
    assert chunk == {
        "id": event["spans"][3]["output"]["chunks"][0]["id"],
        "collection": "embedded_articles",
        "score": 0.91,
    }
    assert out["output"]["sources"] == event["output"]["sources"]
    assert [span["started_at"] for span in out["spans"]] == [
        span["started_at"] for span in event["spans"]
    ]
    assert out["spans"][6]["usage"] == event["spans"][6]["usage"]
    assert out["usage"] == event["usage"]
    assert out["input"]["k"] == 3
    assert out["metadata"]["model_id"] == event["metadata"]["model_id"]


def test_a_bad_policy_setting_is_refused_with_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="none, hash_query or drop_texts"):
        PolicySink(MemoryTraceSink(), sample_rate=1, redaction="everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"0\.\.1"):
        PolicySink(MemoryTraceSink(), sample_rate=1.5, redaction="none")


# Local mode ------------------------------------------------------------------------------------


def test_jsonl_sink_writes_one_whole_line_per_event_from_many_threads(tmp_path: Path) -> None:
    # Given a JSONL sink shared by the local server's threads
    path = tmp_path / "traces" / "traces.jsonl"
    sink = JsonlTraceSink(path, logger=TEST_LOGGER)
    events = [make_trace_event(context="x" * 5000) for _ in range(80)]

    # When 8 threads send 10 events each at once
    def send_all(chunk: list[dict[str, Any]]) -> None:
        for event in chunk:
            sink.send(event)

    threads = [threading.Thread(target=send_all, args=(events[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then the file holds 80 intact JSON lines, one per event
    lines = path.read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(line)["trace_id"] for line in lines) == sorted(
        event["trace_id"] for event in events
    )


class BrokenSink:
    def send(self, event: Any) -> None:
        raise RuntimeError("broken")


def test_fanout_keeps_sending_when_one_sink_breaks_its_contract() -> None:
    memory = MemoryTraceSink()
    FanoutSink(BrokenSink(), memory, logger=TEST_LOGGER).send(make_trace_event())
    assert len(memory.events) == 1
    assert log_lines()[0]["sink"] == "BrokenSink"


def test_build_sink_sends_to_the_queue_and_the_file_the_settings_name(
    sqs: Any, queue_url: str, tmp_path: Path
) -> None:
    # Given settings naming both a queue and a trace file, with hashing on
    path = tmp_path / "traces.jsonl"
    settings = Settings.from_env(
        {
            "TRACE_QUEUE_URL": queue_url,
            "TRACE_FILE": str(path),
            "TRACE_REDACTION": "hash_query",
            "TRACE_HASH_KEY_SECRET": "trace-key",
        }
    )
    sink = build_sink(settings, sqs_client=sqs, fetch_secret=lambda _: KEY.decode())
    event = make_trace_event(query="plain words")

    # When an event is sent
    sink.send(event)

    # Then both received the redacted event
    [on_queue] = received(sqs, queue_url)
    in_file = json.loads(path.read_text(encoding="utf-8"))
    assert on_queue == in_file
    assert on_queue["input"]["query"] == keyed_digest(KEY, "plain words")
