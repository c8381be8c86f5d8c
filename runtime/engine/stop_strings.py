"""Stop sequences over streamed text: cut at the first one, never emit any part of it.

Text that could still turn into a stop sequence (a suffix equal to the start of one) is
held back until the next token decides; when a stop sequence completes, everything from
its start on is dropped (and kept in `cut`: LoRAX's routes return it, as TGI does). A stop
sequence may span several tokens.
"""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stops: list[str]) -> None:
        self._stops = list(stops)
        self._held = ""
        self.cut = ""  # the text dropped from the stop sequence's start on, once one completes

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop sequence completed)."""
        if not self._stops:
            return text, False
        pending = self._held + text
        found = [i for i in (pending.find(stop) for stop in self._stops) if i >= 0]
        if found:
            self._held = ""
            self.cut = pending[min(found):]
            return pending[:min(found)], True
        hold = self._longest_partial_stop(pending)
        self._held = pending[len(pending) - hold:] if hold else ""
        return pending[:len(pending) - hold], False

    def flush(self) -> str:
        """Text held back, released when the sequence ends for another reason."""
        held, self._held = self._held, ""
        return held

    def _longest_partial_stop(self, text: str) -> int:
        longest = min(len(text), max(len(stop) for stop in self._stops) - 1)
        for size in range(longest, 0, -1):
            suffix = text[-size:]
            if any(stop.startswith(suffix) for stop in self._stops):
                return size
        return 0
