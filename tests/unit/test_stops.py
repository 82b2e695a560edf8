"""One rule for stop sequences, whichever path the answer takes.

TGI 3.3.6 (docs/contracts/tgi-openapi.json, GenerateParameters.stop): "Stop generating tokens if a
member of `stop` is generated" - the matched sequence is the last thing in `generated_text`.
OpenAI chat/completions (same contract, ChatRequest.stop): "Up to 4 sequences where the API will
stop generating further tokens" - the returned text does not contain it. Either way the answer a
client sees ends just before the first stop sequence: buffered (parsed), streamed (filtered piece
by piece) and the domain's own cut must agree.
"""

from __future__ import annotations

import pytest

from rag.adapters.llm.protocol import parse_completion_response, parse_generate_response
from rag.domain.stops import StopFilter, cut_at_stop

ALPACA = ("### Instruction:", "### Response:")


def _streamed(text: str, stop: tuple[str, ...], piece_chars: int) -> str:
    stop_filter = StopFilter(stop)
    out = []
    for i in range(0, len(text), piece_chars):
        out.append(stop_filter.feed(text[i : i + piece_chars]))
        if stop_filter.stopped:
            break
    out.append(stop_filter.flush())
    return "".join(out)


@pytest.mark.parametrize(
    ("generated", "stop", "answer"),
    [
        ("DPO needs no reward model.### Instruction:", ALPACA, "DPO needs no reward model."),
        ("First.### Response: again ### Instruction:", ALPACA, "First."),
        ("No stop here.", ALPACA, "No stop here."),
        ("Ends on a stop-like ###", ALPACA, "Ends on a stop-like ###"),
        # An empty stop sequence matches nowhere (it would otherwise cut the whole answer).
        ("Kept whole.", ("", "END"), "Kept whole."),
    ],
)
def test_buffered_streamed_and_parsed_answers_end_at_the_same_place(
    generated: str, stop: tuple[str, ...], answer: str
) -> None:
    tgi = parse_generate_response(
        [{"generated_text": generated, "details": {"finish_reason": "stop_sequence"}}], stop
    )
    openai = parse_completion_response(
        {"choices": [{"text": generated, "finish_reason": "stop"}]}, stop
    )
    assert cut_at_stop(generated, stop) == answer
    assert tgi.text == answer
    assert openai.text == answer
    for piece_chars in (1, 3, len(generated)):
        assert _streamed(generated, stop, piece_chars) == answer
