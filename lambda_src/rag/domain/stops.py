"""One rule for stop sequences, buffered or streamed, whatever the server: the answer ends just
before the first occurrence of any (non-empty) stop sequence, which is not part of it. TGI keeps
the matched sequence in `generated_text`; OpenAI-compatible servers leave it out; both end clean.
"""

from __future__ import annotations

from collections.abc import Sequence


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first occurrence of any non-empty member of `stop`."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


class StopFilter:
    """Lets text through until a stop sequence appears, holding back any tail that could be the
    start of one (a stop sequence often arrives as several tokens: "###", " Instruction", ":").
    TGI includes the matched stop sequence in its tokens; OpenAI servers do not: both end clean.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = tuple(stop)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The part of `text` (with what was held back) that is certainly not a stop sequence."""
        if self.stopped:
            return ""
        held = self._held + text
        before = cut_at_stop(held, self.stop)
        if len(before) < len(held):
            self.stopped = True
            self._held = ""
            return before
        keep = self._longest_stop_prefix_suffix(held)
        self._held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep]

    def flush(self) -> str:
        """At the end of the stream: what was held back was not a stop sequence after all."""
        held, self._held = ("" if self.stopped else self._held), ""
        return held

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        best = 0
        for sequence in self.stop:
            for n in range(min(len(sequence) - 1, len(text)), best, -1):
                if sequence.startswith(text[-n:]):
                    best = n
                    break
        return best
