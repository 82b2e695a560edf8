"""The forwarder Lambda with the real opik REST client against a local Opik recorder.

Events arrive in the real Lambda SQS event shape; the handler's partial batch response is what
SQS would act on (failed ids become visible again, then go to the DLQ after maxReceiveCount).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devkit.fakes.opik_recorder import SPANS_BATCH, OpikRecorder, make_trace_event
from forwarder import handler

QUEUE_ARN = "arn:aws:sqs:eu-west-1:123456789012:llm-twin-traces"


@dataclass
class FakeLambdaContext:
    function_name: str = "trace-forwarder"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:trace-forwarder"
    aws_request_id: str = "req-1"


def sqs_record(body: str, message_id: str, receive_count: int = 1) -> dict[str, Any]:
    return {
        "messageId": message_id,
        "receiptHandle": f"AQEB{message_id}==",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": "1795780800000",
            "SenderId": "AROAEXAMPLE:business",
            "ApproximateFirstReceiveTimestamp": "1795780800010",
        },
        "messageAttributes": {},
        "md5OfBody": "0" * 32,
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE_ARN,
        "awsRegion": "eu-west-1",
    }


def sqs_event(*bodies: str, receive_count: int = 1) -> dict[str, Any]:
    return {
        "Records": [
            sqs_record(body, f"msg-{index}", receive_count) for index, body in enumerate(bodies)
        ]
    }


def invoke(event: dict[str, Any]) -> list[str]:
    response = handler.lambda_handler(event, FakeLambdaContext())  # type: ignore[arg-type]
    return [str(item["itemIdentifier"]) for item in response["batchItemFailures"]]


class LogCapture(logging.Handler):
    """The forwarder's structured log lines, formatted exactly as Powertools writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(handler.logger.registered_formatter.format(record)))


@pytest.fixture
def opik(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpikRecorder]:
    with OpikRecorder() as recorder:
        monkeypatch.setenv("OPIK_URL_OVERRIDE", recorder.url)
        monkeypatch.setenv("OPIK_WORKSPACE", "twin-team")
        monkeypatch.setenv("OPIK_PROJECT_NAME", "llm-twin-test")
        monkeypatch.setenv("OPIK_API_KEY", "local-test-key")
        monkeypatch.delenv("OPIK_API_KEY_SECRET", raising=False)
        handler.writer.cache_clear()
        yield recorder
        handler.writer.cache_clear()


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    target = logging.getLogger(handler.logger.service)
    target.addHandler(capture)
    yield capture
    target.removeHandler(capture)


def test_trace_and_spans_arrive_with_their_ids_fields_nesting_and_usage(opik: OpikRecorder) -> None:
    # Given a full rag trace event
    event = make_trace_event()

    # When the forwarder receives it from SQS
    failures = invoke(sqs_event(json.dumps(event)))

    # Then Opik has one trace under the event's id, with its input, output, metadata and tags
    assert failures == []
    trace = opik.traces[event["trace_id"]]
    assert trace["project_name"] == "llm-twin-test"
    assert trace["name"] == "rag"
    assert trace["input"] == event["input"]
    assert trace["output"] == event["output"]
    assert trace["tags"] == ["rag", "twin-llama-3.1-8b"]
    assert trace["metadata"]["model_id"] == "mlabonne/TwinLlama-3.1-8B-DPO"
    assert trace["metadata"]["model_revision"] == "0123abc"
    assert trace["metadata"]["usage"] == event["usage"]
    assert trace["start_time"].startswith("2026-11-27T10:00:00")
    # And one span per stage under the event's span ids, all children of that trace
    spans = opik.spans
    assert set(spans) == {span["id"] for span in event["spans"]}
    by_name = {span["name"]: span for span in spans.values()}
    assert list(by_name) == [span["name"] for span in event["spans"]]
    assert all(span["trace_id"] == event["trace_id"] for span in spans.values())
    assert all(span.get("parent_span_id") is None for span in spans.values())
    # And each stage says what produced it; the LLM span carries Opik-style token usage
    generate = by_name["generate"]
    assert generate["type"] == "llm"
    assert generate["model"] == "mlabonne/TwinLlama-3.1-8B-DPO"
    assert generate["usage"] == {
        "prompt_tokens": 812,
        "completion_tokens": 120,
        "total_tokens": 932,
    }
    assert generate["metadata"]["endpoint"] == "llm-twin-endpoint"
    assert by_name["search"]["metadata"]["collections"] == event["metadata"]["collections"]
    assert by_name["search"]["metadata"]["k"] == 3
    assert by_name["search"]["metadata"]["scores"] == [0.91, 0.42]
    assert by_name["embed"]["metadata"]["embedding_model"].endswith("all-MiniLM-L6-v2")
    assert by_name["rerank"]["output"] == event["spans"][4]["output"]
    # And the calls carried the workspace and the key
    batch_call = next(c for c in opik.calls if c.path == "/v1/private/traces/batch")
    assert batch_call.headers["Comet-Workspace"] == "twin-team"
    assert batch_call.headers["Authorization"] == "local-test-key"


def test_an_errored_request_keeps_its_error_on_trace_and_span(opik: OpikRecorder) -> None:
    # Given the trace of a request whose generation failed
    error = {"code": "model_error", "message": "TGI returned 424"}
    event = make_trace_event(error=error)

    # When it is forwarded
    assert invoke(sqs_event(json.dumps(event))) == []

    # Then Opik shows the error on the trace and on the generate span
    assert opik.traces[event["trace_id"]]["error_info"]["exception_type"] == "model_error"
    generate = next(s for s in opik.spans.values() if s["name"] == "generate")
    assert generate["error_info"]["message"] == "TGI returned 424"


def test_nested_spans_keep_their_parent(opik: OpikRecorder) -> None:
    # Given an event whose embed span ran inside the search span
    event = make_trace_event()
    search_id = event["spans"][3]["id"]
    event["spans"][2]["parent_id"] = search_id

    # When it is forwarded
    assert invoke(sqs_event(json.dumps(event))) == []

    # Then Opik nests it under that span
    assert opik.spans[event["spans"][2]["id"]]["parent_span_id"] == search_id


def test_a_redelivered_event_is_still_one_trace(opik: OpikRecorder) -> None:
    # Given an event already forwarded once
    event = make_trace_event()
    body = json.dumps(event)
    assert invoke(sqs_event(body)) == []

    # When SQS delivers the same message again
    assert invoke(sqs_event(body, receive_count=2)) == []

    # Then it was written twice under the same ids: one trace, seven spans, same content
    assert opik.writes(event["trace_id"]) == 2
    assert list(opik.traces) == [event["trace_id"]]
    assert len(opik.spans) == len(event["spans"])


LATE_S = 2 * 24 * 3600
OPIK_ID_WINDOW_S = 24 * 3600
"""Opik's default window for the UUIDv7 timestamp of created trace AND span ids
(comet-ml/opik#7179, "UUIDv7 ingestion timestamp validation": "Validates the embedded UUIDv7
timestamp of ingested trace/span ids and rejects out-of-window ids with HTTP 400")."""


def _aged_uuid7(original: str, age_s: float) -> str:
    """`original` with its UUIDv7 timestamp moved `age_s` into the past (RFC 9562 5.7)."""
    value = uuid.UUID(original).int
    ms = int((time.time() - age_s) * 1000)
    return str(uuid.UUID(int=(ms << 80) | (value & ((1 << 80) - 1))))


def _late_event() -> dict[str, Any]:
    """A trace event redriven from the DLQ two days after the request, one span nested."""
    event = make_trace_event()
    event["trace_id"] = _aged_uuid7(event["trace_id"], LATE_S)
    for span in event["spans"]:
        span["id"] = _aged_uuid7(span["id"], LATE_S)
    event["spans"][4]["parent_id"] = event["spans"][3]["id"]  # rerank under search
    return event


def test_a_late_trace_lands_with_its_spans_under_fresh_in_window_ids(opik: OpikRecorder) -> None:
    # Given an Opik that refuses trace and span ids older than its window, and a late event
    opik.enforce_id_window(OPIK_ID_WINDOW_S)
    event = _late_event()

    # When the forwarder delivers it, twice (SQS is at-least-once)
    assert invoke(sqs_event(json.dumps(event))) == []
    assert invoke(sqs_event(json.dumps(event))) == []

    # Then one trace and every span landed, under new ids inside the window
    [trace] = opik.traces.values()
    assert trace["metadata"]["original_trace_id"] == event["trace_id"]
    spans = opik.spans
    assert len(spans) == len(event["spans"])
    for span_id, span in spans.items():
        assert time.time() - uuid.UUID(span_id).int / 2**80 / 1000 < OPIK_ID_WINDOW_S
        assert span["trace_id"] == trace["id"]
        assert opik.writes(span_id) == 2  # the redelivery upserted the same ids
    # And each span keeps its first id, and the nesting follows the new ids
    by_original = {s["metadata"]["original_span_id"]: s for s in spans.values()}
    assert set(by_original) == {s["id"] for s in event["spans"]}
    search, rerank = event["spans"][3]["id"], event["spans"][4]["id"]
    assert by_original[rerank]["parent_span_id"] == by_original[search]["id"]
    assert by_original[search]["id"] != search


def test_opik_5xx_fails_the_item_and_the_retry_delivers_it(opik: OpikRecorder) -> None:
    # Given Opik answering 503 to the next request
    event = make_trace_event()
    body = json.dumps(event)
    opik.fail_next(1, status=503)

    # When the forwarder handles the event
    failures = invoke(sqs_event(body))

    # Then the item is reported failed and nothing is stored
    assert failures == ["msg-0"]
    assert opik.traces == {}
    # And when SQS redelivers it after the visibility timeout, it arrives
    assert invoke(sqs_event(body, receive_count=2)) == []
    assert event["trace_id"] in opik.traces
    assert len(opik.spans) == len(event["spans"])


def test_a_5xx_on_the_spans_call_fails_the_item_even_though_the_trace_landed(
    opik: OpikRecorder,
) -> None:
    # Given Opik accepting the trace but answering 500 to the spans
    event = make_trace_event()
    body = json.dumps(event)
    opik.fail_next(1, status=500, path=SPANS_BATCH)

    # When the forwarder handles the event
    assert invoke(sqs_event(body)) == ["msg-0"]

    # Then the half-written trace is not acknowledged, and the retry completes it in place
    assert opik.spans == {}
    assert invoke(sqs_event(body, receive_count=2)) == []
    assert list(opik.traces) == [event["trace_id"]]
    assert len(opik.spans) == len(event["spans"])


def test_opik_down_then_back_nothing_is_lost(opik: OpikRecorder) -> None:
    # Given Opik down (connections refused) and a batch of three events
    events = [make_trace_event() for _ in range(3)]
    bodies = [json.dumps(event) for event in events]
    opik.down()

    # When the forwarder handles the batch
    failures = invoke(sqs_event(*bodies))

    # Then every item is reported failed, so none is deleted from the queue
    assert failures == ["msg-0", "msg-1", "msg-2"]
    # And when Opik is back and SQS redelivers them, all three arrive
    opik.up()
    assert invoke(sqs_event(*bodies, receive_count=2)) == []
    assert set(opik.traces) == {event["trace_id"] for event in events}


def test_a_dropped_connection_fails_only_after_being_reported(opik: OpikRecorder) -> None:
    # Given Opik closing the connection without an answer
    event = make_trace_event()
    opik.drop_next(1)

    # When the forwarder handles the event
    failures = invoke(sqs_event(json.dumps(event)))

    # Then the item is failed, not acknowledged
    assert failures == ["msg-0"]
    assert opik.traces == {}


def test_opik_rejecting_a_trace_fails_that_item(opik: OpikRecorder, logs: LogCapture) -> None:
    # Given Opik rejecting the request as invalid
    opik.fail_next(1, status=400)

    # When the forwarder handles it
    failures = invoke(sqs_event(json.dumps(make_trace_event())))

    # Then the item fails (SQS retries it, then the DLQ keeps it) and the reason is logged
    assert failures == ["msg-0"]
    assert any("HTTP 400" in line.get("reason", "") for line in logs.lines)


def test_a_malformed_event_fails_alone_with_a_clear_log_line(
    opik: OpikRecorder, logs: LogCapture
) -> None:
    # Given a batch with a good event, a non-JSON body, an event with a bad id, and a good event
    good_first, good_last = make_trace_event(), make_trace_event()
    bad_id = make_trace_event()
    bad_id["trace_id"] = "not-a-uuid"
    del bad_id["spans"][0]["started_at"]
    batch = sqs_event(
        json.dumps(good_first), "{truncated", json.dumps(bad_id), json.dumps(good_last)
    )

    # When the forwarder handles the batch
    failures = invoke(batch)

    # Then only the malformed items fail and the good ones reach Opik
    assert failures == ["msg-1", "msg-2"]
    assert set(opik.traces) == {good_first["trace_id"], good_last["trace_id"]}
    # And each failure is logged once, as JSON, naming the message and the problem
    errors = [line for line in logs.lines if line["message"] == "malformed trace event"]
    assert [line["message_id"] for line in errors] == ["msg-1", "msg-2"]
    assert all(line["level"] == "ERROR" for line in errors)
    assert "body is not JSON" in errors[0]["problem"]
    assert "trace_id" in errors[1]["problem"]
    assert "spans.0.started_at: Field required" in errors[1]["problem"]


@mock_aws
def test_the_api_key_comes_from_secrets_manager(
    opik: OpikRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the key stored in Secrets Manager and only the secret's name in the environment
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    boto3.client("secretsmanager").create_secret(Name="opik-api-key", SecretString="sm-key-123")
    monkeypatch.delenv("OPIK_API_KEY")
    monkeypatch.setenv("OPIK_API_KEY_SECRET", "opik-api-key")
    handler.writer.cache_clear()

    # When an event is forwarded
    assert invoke(sqs_event(json.dumps(make_trace_event()))) == []

    # Then Opik received the key from the secret
    assert {call.headers["Authorization"] for call in opik.calls} == {"sm-key-123"}
