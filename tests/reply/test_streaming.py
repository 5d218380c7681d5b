"""Every format's replies, whole and split at every character boundary, in one-character deltas and at random:
the same text, reasoning and calls each time, and no piece of a marker in what feed() hands out."""

from __future__ import annotations

import json
import re

import pytest

from mlxd.reply import ReplyFormat
from tests.reply.cases import CASES, MARKERS, Case
from tests.reply.streaming import parse, splits

GENERATED_ID = re.compile(r"call_[A-Za-z0-9]{9}")
MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")

PARAMS = [pytest.param(name, case, id=f"{name}: {case.label}") for name, cases in CASES.items() for case in cases]


@pytest.mark.parametrize("name, case", PARAMS)
def test_whole_reply(name: str, case: Case) -> None:
    got = parse(ReplyFormat(name), case.prompt, [case.output], case.stop, case.tools)
    assert (got.text, got.reasoning) == (case.text, case.reasoning)
    assert [(call.name, call.arguments) for call in got.calls] == [
        (call_name, _normal(arguments)) for call_name, arguments, _ in case.calls]
    for call, (_, _, expected_id) in zip(got.calls, case.calls):
        if expected_id is not None:
            assert call.id == expected_id
        else:
            assert (MISTRAL_ID if name == "mistral" else GENERATED_ID).fullmatch(call.id), call.id


@pytest.mark.parametrize("name, case", PARAMS)
def test_every_split_reads_the_same(name: str, case: Case) -> None:
    fmt = ReplyFormat(name)
    whole = parse(fmt, case.prompt, [case.output], case.stop, case.tools).outcome()
    for deltas in splits(case.output, seed=len(case.output)):
        got = parse(fmt, case.prompt, deltas, case.stop, case.tools)
        assert got.outcome() == whole, deltas
        if case.well_formed:
            for piece in got.fed_pieces:
                assert not any(marker in piece for marker in MARKERS[name]), (piece, deltas)
                assert not any(piece.endswith(marker[:size]) for marker in MARKERS[name]
                               for size in range(1, len(marker))), (piece, deltas)


def _normal(arguments: dict) -> str:
    return json.dumps(arguments, ensure_ascii=False)
