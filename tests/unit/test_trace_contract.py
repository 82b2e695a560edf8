"""The span names of the trace event (docs/CONTRACTS.md "Trace event", DESIGN 3.4): one
definition, `trace_contract.SpanName`, that the business Lambda writes and the forwarder reads.
The literals below are the wire contract, not a copy of the enum."""

from __future__ import annotations

import json

import pytest

from devkit.fakes.opik_recorder import make_trace_event
from forwarder.opik_mapping import MalformedEvent, parse_event, to_span_writes
from trace_contract import SpanName

CONTRACT_NAMES = [
    "self_query",
    "query_expansion",
    "embed",
    "search",
    "rerank",
    "prompt",
    "generate",
]


def test_the_names_are_the_documented_wire_values_in_pipeline_order() -> None:
    """docs/CONTRACTS.md lists the span names in pipeline order; each member is that JSON string."""
    assert [str(name) for name in SpanName] == CONTRACT_NAMES
    assert json.dumps(list(SpanName)) == json.dumps(CONTRACT_NAMES)


def test_the_forwarder_takes_every_contract_name_and_refuses_another() -> None:
    """A schema-1 event with every documented span reaches Opik under those names; an unknown span
    name makes the event malformed (never retried into Opik), and the error names the field."""
    # Given an event as the business Lambda emits it
    event = make_trace_event()
    # When the forwarder parses and maps it
    spans = to_span_writes(parse_event(json.dumps(event)), project_name="p")
    # Then Opik gets the contract's names
    assert [span.name for span in spans] == CONTRACT_NAMES
    # Given the same event with a name outside the contract
    event["spans"][2]["name"] = "retrieve"
    # Then it is refused, naming the span's field
    with pytest.raises(MalformedEvent, match=r"spans\.2\.name"):
        parse_event(json.dumps(event))
