"""Late trace delivery (issue 12 finding 10): Opik refuses trace ids that are not UUIDv7, and
trace ids whose UUIDv7 timestamp is older than its window, 24 h by default (DESIGN 4, Opik
release notes mid-2026). A DLQ redrive a day later must still deliver."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from botocore.stub import Stubber

from forwarder.opik_mapping import (
    OPIK_TRACE_WINDOW_S,
    TraceEvent,
    relocate_if_late,
    uuid7_ms,
)
from tools import redrive_traces

NOW_S = 1_800_000_000.0


def _uuid7_at(seconds: float) -> str:
    ms = int(seconds * 1000)
    return str(uuid.UUID(int=(ms << 80) | (0x7 << 76) | (0b10 << 62) | 12345))


def _event(age_s: float) -> TraceEvent:
    started = datetime.fromtimestamp(NOW_S - age_s, tz=UTC)
    return TraceEvent.model_validate(
        {
            "schema": 1,
            "trace_id": _uuid7_at(NOW_S - age_s),
            "name": "rag",
            "started_at": started.isoformat(),
            "ended_at": started.isoformat(),
            "metadata": {"model_id": "m"},
        }
    )


def test_a_recent_trace_keeps_its_id() -> None:
    event = _event(age_s=3600)
    assert relocate_if_late(event, now_s=NOW_S) is event


def test_a_trace_older_than_the_window_gets_a_uuid7_inside_it_and_keeps_the_original() -> None:
    # Given a trace event redriven two days after the request
    event = _event(age_s=2 * 24 * 3600)
    # When the forwarder prepares it
    moved = relocate_if_late(event, now_s=NOW_S)
    # Then its id is a UUIDv7 whose timestamp Opik's 24 h window accepts
    new = uuid.UUID(moved.trace_id)
    assert new.version == 7 and new.variant == uuid.RFC_4122
    assert 0 <= NOW_S - uuid7_ms(moved.trace_id) / 1000 < OPIK_TRACE_WINDOW_S
    # and the original id and the request's own times are kept
    assert moved.metadata["original_trace_id"] == event.trace_id
    assert moved.metadata["model_id"] == "m"
    assert moved.started_at == event.started_at


def test_redelivering_the_same_late_trace_reuses_its_new_id() -> None:
    """Opik upserts by id: a second delivery of the same late event (SQS is at-least-once)
    must not make a second trace."""
    event = _event(age_s=3 * 24 * 3600)
    first = relocate_if_late(event, now_s=NOW_S)
    again = relocate_if_late(event, now_s=NOW_S + 60)
    other = relocate_if_late(_event(age_s=3 * 24 * 3600 + 1), now_s=NOW_S)
    assert first.trace_id == again.trace_id
    assert other.trace_id != first.trace_id


def test_a_trace_close_to_the_window_edge_is_moved_before_opik_would_refuse_it() -> None:
    event = _event(age_s=OPIK_TRACE_WINDOW_S - 60)
    assert relocate_if_late(event, now_s=NOW_S).trace_id != event.trace_id


def test_the_redrive_command_starts_sqs_own_dlq_redrive(capsys: pytest.CaptureFixture[str]) -> None:
    """SQS's DLQ redrive is StartMessageMoveTask with the DLQ as source; without a destination
    SQS returns each message to its source queue (SQS API reference, StartMessageMoveTask).
    moto does not implement it, so botocore's Stubber checks the call against the service model."""
    import boto3

    sqs = boto3.client("sqs", region_name="eu-west-1")
    dlq_arn = "arn:aws:sqs:eu-west-1:123456789012:llm-twin-traces-dlq"
    with Stubber(sqs) as stub:
        stub.add_response(
            "start_message_move_task", {"TaskHandle": "handle-1"}, {"SourceArn": dlq_arn}
        )
        assert redrive_traces.main(["--dlq-arn", dlq_arn], sqs=sqs) == 0
        stub.assert_no_pending_responses()
    assert "handle-1" in capsys.readouterr().out
