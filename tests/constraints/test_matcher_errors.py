"""The matcher's refusals and failures on the fixture tokenizer, each with its error code: a token the mask forbade
and a rollback too far ("rejected", a bug: INTERNAL), a grammar that cannot say what may follow ("invalid"), one
whose lexer exceeds llguidance's limits ("too_large"); and rollback back to an earlier mask, and the mask row's
shape."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlxd.constraints import ConstraintError, RowConstraint
from tests.constraints.walks import SCHEMAS, compile_spec


def test_a_token_the_mask_forbids_is_rejected(tiny):
    row = RowConstraint(compile_spec(tiny, "regex", "[0-9]+"))
    with pytest.raises(ConstraintError) as caught:
        row.consume(tiny.tokenizer.tokenize_str("a")[0])
    assert caught.value.code == "rejected"


def test_a_grammar_that_cannot_go_on_is_invalid_not_a_bug(tiny):
    """Found by the gRPC fuzzer: a $ref that names its own definition compiles, and llguidance fails the mask
    after '{"p":' (NoExtensionBias). That is the request's schema at fault: "invalid" (INVALID_ARGUMENT), not
    "rejected" (INTERNAL, kept for tokens the mask forbade)."""
    schema = {"$defs": {"d": {"$defs": {"d": {"type": "null"}}, "$ref": "#/$defs/d"}}, "type": "object",
              "properties": {"p": {"$ref": "#/$defs/d"}}, "required": ["p"]}
    row = RowConstraint(compile_spec(tiny, "json_schema", json.dumps(schema)))
    out = np.zeros(row.mask_words, dtype=np.int32)
    with pytest.raises(ConstraintError) as caught:
        for token in tiny.tokenizer.tokenize_str('{"p":'):
            row.fill_bitmask(out)
            row.consume(token)
        row.fill_bitmask(out)
    assert caught.value.code == "invalid" and "NoExtensionBias" in caught.value.message


def test_rollback_returns_to_an_earlier_mask(tiny):
    grammar = compile_spec(tiny, "json_schema", json.dumps(SCHEMAS["bounded_object"]))
    row = RowConstraint(grammar)
    tokens = tiny.tokenizer.tokenize_str('{"name": "Al", "age": 3')
    masks = []
    out = np.zeros(grammar.mask_words, dtype=np.int32)
    for token in tokens:
        row.fill_bitmask(out)
        masks.append(out.copy())
        row.consume(token)
    row.rollback(3)
    row.fill_bitmask(out)
    assert np.array_equal(out, masks[-3])
    row.rollback(0)
    with pytest.raises(ConstraintError) as caught:
        row.rollback(len(tokens))
    assert caught.value.code == "rejected"


def test_the_mask_row_must_fit(tiny):
    row = RowConstraint(compile_spec(tiny, "regex", "a"))
    words = row.grammar.mask_words
    for bad in (np.zeros(words, np.int64), np.zeros(words + 1, np.int32), np.zeros((2, words), np.int32),
                np.zeros(2 * words, np.int32)[::2]):
        with pytest.raises(ValueError):
            row.fill_bitmask(bad)
    batch = np.zeros((3, words), np.int32)
    row.fill_bitmask(batch[1])  # a row of the runner's batch buffer, filled in place
    assert batch[1].any() and not batch[0].any() and not batch[2].any()


def test_a_grammar_too_costly_to_follow_fails_too_large(tiny):
    # Compiles within the limits, but the lexer exceeds them a few tokens in: the request fails, it does not hang.
    row = RowConstraint(compile_spec(tiny, "regex", "x{1000}{1000}"))
    out = np.zeros(row.grammar.mask_words, dtype=np.int32)
    with pytest.raises(ConstraintError) as caught:
        for token in tiny.tokenizer.tokenize_str("x" * 64):
            row.fill_bitmask(out)
            row.consume(token)
    assert caught.value.code == "too_large"
