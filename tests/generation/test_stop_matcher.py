"""StopMatcher: table tests over feed sequences, a large stop set, and a property test against a reference."""

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxd.errors import InvalidRequest
from mlxd.generation.stops import StopMatcher, validate_stops


def run(stops: list[str], feeds: list[str]) -> tuple[list[str], str | None, str]:
    """Feed until a match; return (emitted pieces, matched stop, flushed text)."""
    matcher = StopMatcher(stops)
    out = []
    for piece in feeds:
        text, matched = matcher.feed(piece)
        out.append(text)
        if matched is not None:
            return out, matched, ""
    return out, None, matcher.flush()


@pytest.mark.parametrize("stops, feeds, emitted, matched, flushed", [
    # no stops: everything passes straight through
    ([], ["ab", "c"], ["ab", "c"], None, ""),
    # stop inside one feed
    (["END"], ["abcENDxyz"], ["abc"], "END", ""),
    # stop at the very start
    (["END"], ["ENDabc"], [""], "END", ""),
    (["END"], ["E", "N", "D"], ["", "", ""], "END", ""),
    # stop spanning many feeds, text before it released at once
    (["<|im_end|>"], ["hi <", "|im", "_", "end", "|>", "more"], ["hi ", "", "", "", ""], "<|im_end|>", ""),
    # partial match that fails is released
    (["END"], ["abcEN", "x"], ["abc", "ENx"], None, ""),
    (["END"], ["EN", "EN", "D"], ["", "EN", ""], "END", ""),
    # the held-back suffix is exactly the longest stop prefix, not more
    (["abab"], ["xxaba"], ["xx"], None, "aba"),
    (["abab"], ["xxaba", "b"], ["xx", ""], "abab", ""),
    (["abab"], ["abaa", "bab"], ["aba", ""], "abab", ""),
    # overlapping stops: the earliest start wins, tie → the longest
    (["bc", "abcd"], ["xabcd"], ["x"], "abcd", ""),
    (["b", "bcd"], ["abcd"], ["a"], "bcd", ""),
    (["d", "abc"], ["xabcd"], ["x"], "abc", ""),
    # held text at the end of generation comes back from flush
    (["STOP"], ["the end ST"], ["the end "], None, "ST"),
    # a stop that is a prefix of another one
    (["ab", "abc"], ["zab"], ["z"], "ab", ""),
    # unicode
    (["。"], ["你好。再见"], ["你好"], "。", ""),
])
def test_table(stops, feeds, emitted, matched, flushed):
    assert run(stops, feeds) == (emitted, matched, flushed)


def test_earliest_start_beats_earlier_end_within_a_feed():
    # "cd" ends before "bcdx" does, but "bcdx" starts earlier; both are complete in the fed text.
    assert run(["cd", "bcdx"], ["abcdx"]) == (["a"], "bcdx", "")


def test_flush_empties_the_matcher():
    matcher = StopMatcher(["xyz"])
    assert matcher.feed("axy") == ("a", None)
    assert matcher.flush() == "xy"
    assert matcher.flush() == ""
    assert matcher.feed("z") == ("z", None)


@pytest.mark.parametrize("stops, max_count, max_len, needle", [
    (["a", ""], 4, 10, r"stop\[1\] is empty"),
    (["a"] * 5, 4, 10, "at most 4"),
    (["a", "x" * 11], 4, 10, r"stop\[1\] has 11 characters"),
])
def test_validate_stops_rejects(stops, max_count, max_len, needle):
    with pytest.raises(InvalidRequest, match=needle):
        validate_stops(stops, max_count, max_len)


def test_validate_stops_accepts():
    validate_stops([], 0, 0)
    validate_stops(["a", "x" * 10], 2, 10)


def test_thousands_of_stops_stay_fast():
    rng = random.Random(0)
    alphabet = "abcdefgh "
    stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(6, 30))) for _ in range(5000)]
    stops = [s for s in stops if s.strip()]
    target = stops[1234]
    text = "".join(rng.choice("ijklmnop") for _ in range(20000)) + target + "tail"
    matcher = StopMatcher(stops)
    started = time.perf_counter()
    emitted = []
    matched = None
    for i in range(0, len(text), 3):
        piece, matched = matcher.feed(text[i:i + 3])
        emitted.append(piece)
        if matched is not None:
            break
    elapsed = time.perf_counter() - started
    assert matched == target
    assert "".join(emitted) == text[:20000]
    assert elapsed < 1.0


def reference(stops: list[str], text: str) -> tuple[str, str | None]:
    """Text before the earliest-starting stop (tie → longest) and that stop, by brute force."""
    hits = [(text.find(s), -len(s), s) for s in stops if s in text]
    if not hits:
        return text, None
    start, _, stop = min(hits)
    return text[:start], stop


def longest_stop_prefix_suffix(stops: list[str], text: str) -> int:
    return max((k for s in stops for k in range(1, min(len(s), len(text)) + 1) if text.endswith(s[:k])), default=0)


@settings(max_examples=300, deadline=None)
@given(stops=st.lists(st.text("abc", min_size=1, max_size=5), min_size=1, max_size=6),
       text=st.text("abcd", max_size=40), cuts=st.lists(st.integers(0, 40), max_size=8))
def test_property_never_emits_part_of_a_stop_and_loses_nothing(stops, text, cuts):
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    feeds = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    matcher = StopMatcher(stops)
    emitted, fed, matched = "", "", None
    for piece in feeds:
        out, matched = matcher.feed(piece)
        emitted += out
        fed += piece
        if matched is not None:
            break
        # Held back: exactly the longest suffix of what was fed that could still begin a stop.
        assert len(fed) - len(emitted) == longest_stop_prefix_suffix(stops, fed)
    if matched is None:
        assert emitted + matcher.flush() == text
        assert not any(s in text for s in stops)
        return
    assert matched in stops
    assert text.startswith(emitted + matched)
    # No stop occurring in the text up to the end of the match starts inside the emitted text.
    end = len(emitted) + len(matched)
    assert not any(text.startswith(s, i) and i + len(s) <= end for s in stops for i in range(len(emitted)))
    if len(feeds) == 1:  # all at once: the earliest-starting stop wins, ties to the longest
        assert (emitted, matched) == reference(stops, text)
