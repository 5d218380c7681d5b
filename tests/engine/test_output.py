"""A request's output at its end: text held back (a byte run not yet closed, a possible stop string) is flushed and
may still complete a stop string, whose text never reaches the client; the finish reason then says so, unless the
request was cancelled, which ends CANCELLED whatever its text holds."""

from __future__ import annotations

import pytest

from mlxd.engine.output import RequestOutput
from mlxd.engine.request import FinalEvent, FinishReason, GenerationRequest, TokenEvent
from mlxd.generation.params import SamplingParams

BYTE = 200  # a byte-fallback piece: alone it decodes to U+FFFD, and the detokenizer holds it for the bytes after


def _decode(ids: list[int]) -> str:
    return "".join("\ufffd" if i == BYTE else chr(ord("a") + i - 3) for i in ids)


def _ended(reason: FinishReason) -> tuple[str, FinalEvent]:
    """Tokens "a", "b" and a byte piece under the stop string "b\ufffd", then the request ended for `reason`."""
    request = GenerationRequest("r", [3], SamplingParams(temperature=0.0), max_tokens=10, stops=("b\ufffd",))
    output = RequestOutput(request, 10, _decode, frozenset({BYTE}), frozenset())
    events = [e for token in (3, 4, BYTE) for e in output.accept(token, None)] + output.finish(reason)
    final = events[-1]
    assert isinstance(final, FinalEvent) and output.done
    return "".join(e.text for e in events if isinstance(e, TokenEvent)), final


@pytest.mark.parametrize("reason", [FinishReason.LENGTH, FinishReason.STOP])
def test_a_stop_completed_by_the_flushed_tail_ends_the_request_there(reason):
    text, final = _ended(reason)
    assert text == "a" and final.finish_reason is FinishReason.STOP_SEQUENCE and final.matched_stop == "b\ufffd"


def test_a_cancelled_request_ends_cancelled_and_its_stop_text_still_never_leaks():
    text, final = _ended(FinishReason.CANCELLED)
    assert text == "a" and final.finish_reason is FinishReason.CANCELLED and final.matched_stop == ""
    assert final.completion_tokens == 3
