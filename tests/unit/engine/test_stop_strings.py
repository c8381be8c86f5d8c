"""Stop sequences over any split of the text: generation stops with the piece that completes
one, the text so far is cut at the first stop in it, and none of a stop is ever emitted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from loraplex.runtime.engine.stop_strings import StopStringMatcher

ALPHABET = "ab c\n"


def expected_output(pieces: list[str], stops: list[str]) -> tuple[str, bool]:
    """The text up to the first piece after which it holds a stop (nothing after that piece is
    generated), cut where the first stop in it starts."""
    text = ""
    for piece in pieces:
        text += piece
        hits = [text.find(stop) for stop in stops if stop in text]
        if hits:
            return text[:min(hits)], True
    return text, False


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
    assert (emitted, stopped) == expected_output(pieces, stops)


def test_a_stop_completing_first_wins_over_one_starting_earlier_in_later_text():
    """"a" completes with the piece "ba"; "bab" would start earlier but needs a piece that a
    stopped sequence never generates. Within one piece the earlier start wins."""
    matcher = StopStringMatcher(["a", "bab"])
    assert matcher.feed("ba") == ("b", True)
    assert StopStringMatcher(["a", "bab"]).feed("bab") == ("", True)


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
