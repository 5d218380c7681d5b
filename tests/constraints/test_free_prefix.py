"""`after`: free text up to a marker, then the constraint (constraints/free_prefix.py), on the fixture tokenizer."""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest

from mlxd.constraints import ConstraintError, ConstraintSpec, RowConstraint
from tests.constraints.conftest import TINY_TOKENS
from tests.constraints.walks import seeded, walk

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["a"],
          "additionalProperties": False}


def _consumes(tiny, grammar, text: str) -> RowConstraint:
    row = RowConstraint(grammar)
    for token in tiny.tokenizer.tokenize_str(text):
        row.consume(token)
    return row


@pytest.mark.parametrize("marker", ["</think>", "<|end|>", "]]", "answer:"])
def test_free_text_then_the_constraint(tiny, marker):
    grammar = tiny.compile(ConstraintSpec("json_schema", json.dumps(SCHEMA), max_whitespace=0, after=marker))
    for thought in ("", "some thinking", "a\nb\n{\"a\": 1} is not it yet ["):
        row = _consumes(tiny, grammar, f"{thought}{marker}\n\n{{\"a\":7}}")
        assert row.is_accepting(), (thought, marker)
    row = _consumes(tiny, grammar, "no marker yet {\"a\":7}")
    assert not row.is_accepting()  # still free: the JSON so far is thinking
    with pytest.raises(ConstraintError):
        _consumes(tiny, grammar, f"x{marker} not json")


def test_end_of_sequence_waits_for_the_constrained_part(tiny):
    grammar = tiny.compile(ConstraintSpec("regex", "[0-9]{2}", after="</think>"))
    row = _consumes(tiny, grammar, "hmm</think>")
    mask = np.zeros(grammar.mask_words, dtype=np.int32)
    row.fill_bitmask(mask)
    assert not (int(mask[2 // 32]) >> (2 % 32)) & 1  # EOS (id 2) not allowed before the two digits
    for token in tiny.tokenizer.tokenize_str("42"):
        row.consume(token)
    assert row.is_accepting()


@pytest.mark.parametrize("seed", range(6))
def test_seeded_walks_end_with_a_valid_answer_after_the_marker(tiny, seed):
    grammar = tiny.compile(ConstraintSpec("json_schema", json.dumps(SCHEMA), max_whitespace=1, after="</think>"))
    result = walk(tiny, grammar, seeded(seed, grammar.eos_token_ids, stop=0.9), TINY_TOKENS, max_steps=600)
    if result.finished:
        head, _, answer = result.text.partition("</think>")
        assert "</think>" not in head and _ == "</think>"
        jsonschema.validate(json.loads(answer), SCHEMA)


@pytest.mark.parametrize("kind,source,answer", [("regex", "(yes|no)", "yes"), ("lark", 'start: "a"+ "b"', "aab"),
                                                 ("gbnf", 'root ::= "x" [0-9]', "x5"), ("json_object", "", "{}")])
def test_every_kind_takes_a_marker(tiny, kind, source, answer):
    grammar = tiny.compile(ConstraintSpec(kind, source, after="<done>"))
    assert _consumes(tiny, grammar, f"thinking...<done> {answer}").is_accepting()


@pytest.mark.parametrize("marker,words", [("x" * 65, "the limit is 64"), ("  \n", "visible marker")])
def test_bad_markers_are_refused(tiny, marker, words):
    with pytest.raises(ConstraintError, match=re.escape(words)):
        tiny.compile(ConstraintSpec("regex", "a", after=marker))


@pytest.mark.parametrize("spelled", [False, True])
def test_a_marker_the_tokenizer_holds_as_one_token(spelled):
    # Qwen 3's </think> is an added token, which llguidance treats as special: no regex matches it.
    from tests.reply.grammar_support import model
    qwen = model("qwen3", ["<think>", "</think>"], "<|im_end|>")
    grammar = qwen.compile(f"start: %json {json.dumps(SCHEMA)}", after="</think>")
    if spelled:  # the marker in pieces, as a model may also write it
        ids = qwen.tokenizer.encode("hmm </", add_special_tokens=False).ids
        ids += qwen.tokenizer.encode("think>", add_special_tokens=False).ids
        assert qwen.tokenizer.token_to_id("</think>") not in ids
    else:
        ids = qwen.tokenizer.encode("hmm </think>", add_special_tokens=False).ids
        assert qwen.tokenizer.token_to_id("</think>") in ids
    row = RowConstraint(grammar)
    for token in ids + qwen.tokenizer.encode('\n\n{"a": 3}', add_special_tokens=False).ids:
        row.consume(token)
    assert row.is_accepting()
    after_marker = RowConstraint(grammar)
    after_marker.consume(qwen.tokenizer.token_to_id("</think>"))
    with pytest.raises(ConstraintError):   # the constraint holds from the marker token on
        for token in qwen.tokenizer.encode("not json", add_special_tokens=False).ids:
            after_marker.consume(token)
