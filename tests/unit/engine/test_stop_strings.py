"""Stop sequences over any split of the text: cut at the first, never emit any of it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from loraplex.runtime.engine.stop_strings import StopStringMatcher

ALPHABET = "ab c\n"


def expected_output(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [text.find(stop) for stop in stops if stop in text]
    return (text[:min(hits)], True) if hits else (text, False)


@given(
    pieces=st.lists(st.text(ALPHABET, max_size=4), max_size=12),
    stops=st.lists(st.text(ALPHABET, min_size=1, max_size=3), min_size=1, max_size=3),
)
def test_streamed_output_equals_the_text_cut_at_the_first_stop(pieces, stops):
    matcher = StopStringMatcher(stops)
    emitted = fed = ""
    stopped = False
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        emitted += text
        fed += piece
        assert not any(stop in emitted for stop in stops)
        if stopped:
            assert emitted + matcher.cut == fed  # what was cut is kept, from the stop on
            assert any(matcher.cut.startswith(stop) for stop in stops)
            break
    if not stopped:
        emitted += matcher.flush()
    assert (emitted, stopped) == expected_output("".join(pieces), stops)


def test_text_that_may_start_a_stop_is_held_back_until_decided():
    matcher = StopStringMatcher(["</end>"])
    assert matcher.feed("hello </e") == ("hello ", False)
    assert matcher.feed("nvoy") == ("</envoy", False)
    assert matcher.feed(" </en") == (" ", False)
    assert matcher.feed("d> more") == ("", True)


def test_without_stops_text_passes_through():
    matcher = StopStringMatcher([])
    assert matcher.feed("anything") == ("anything", False)
    assert matcher.flush() == ""
