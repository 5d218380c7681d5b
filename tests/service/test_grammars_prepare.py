"""The daemon builds its grammar compiler before it serves (service/constraints.py `prepare`): llguidance holds the
GIL while it builds the token tables, so built at the first constrained request they stalled every stream."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any, cast

from mlxd.constraints import GrammarCompiler
from mlxd.service import constraints
from mlxd.service.constraints import Grammars
from mlxd_proto.v1 import inference_pb2 as pb
from tests.constraints.conftest import TINY_EOS, TINY_TOKENIZER, TINY_WIDTH


def _grammars(serialized: str) -> Grammars:
    return Grammars(cast(Any, SimpleNamespace(serialized=serialized)), TINY_WIDTH, TINY_EOS)


def test_prepare_builds_the_compiler_the_first_request_then_uses(monkeypatch):
    built = []

    class Counted(GrammarCompiler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(constraints, "GrammarCompiler", Counted)
    grammars = _grammars(TINY_TOKENIZER.read_text(encoding="utf-8"))
    grammars.prepare()
    assert built == [1]
    grammars.constraint(pb.Constraint(regex="[a-z]{1,4}"))
    assert built == [1]


def test_a_tokenizer_llguidance_cannot_take_is_logged_not_raised(caplog):
    with caplog.at_level(logging.WARNING):
        _grammars("not a tokenizer").prepare()
    assert "the grammar compiler could not be built" in caplog.text
