"""A follower's grammar compiler is built before any constrained row (parallel/constraints.py FollowerGrammars.
prepare): rank 0's rows with the same EOS ids use it as it is, rows with others build it again, and a tokenizer
llguidance cannot take leaves the follower running."""

from __future__ import annotations

import logging

from mlxd.constraints import ConstraintSpec, GrammarCompiler, RowConstraint
from mlxd.parallel.constraints import FollowerGrammars, encode_constraint
from tests.constraints.conftest import TINY_EOS, TINY_TOKENIZER, TINY_WIDTH


def _spec(eos: list[int]) -> dict:
    compiler = GrammarCompiler(TINY_TOKENIZER.read_text(encoding="utf-8"), TINY_WIDTH, eos)
    return encode_constraint(RowConstraint(compiler.compile(ConstraintSpec("regex", "[a-c]{2,4}"))))


def test_the_compiler_is_built_before_the_first_row_and_kept_for_rank_0s_eos():
    reads: list[int] = []

    def tokenizer_json() -> str:
        reads.append(1)
        return TINY_TOKENIZER.read_text(encoding="utf-8")

    grammars = FollowerGrammars(tokenizer_json, TINY_WIDTH)
    grammars.prepare(list(TINY_EOS))
    assert len(reads) == 1
    row = grammars.constraint(_spec(list(TINY_EOS)))
    assert len(reads) == 1 and list(row.grammar.eos_token_ids) == TINY_EOS
    grammars.constraint(_spec([1, 2]))  # rank 0 with other EOS ids: built again, for them
    assert len(reads) == 2


def test_a_tokenizer_llguidance_cannot_take_is_logged(caplog):
    grammars = FollowerGrammars(lambda: "not a tokenizer", TINY_WIDTH)
    with caplog.at_level(logging.WARNING):
        grammars.prepare(list(TINY_EOS))
    assert "could not be built" in caplog.text
