"""A JSON Schema whose numbers llguidance would hold as others is refused, naming the number (constraints/
schema_numbers.py); numbers it holds exactly compile, and outputs under them are the schema's own numbers."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from mlxd.constraints import ConstraintError, ConstraintSpec
from tests.constraints.conftest import TINY_TOKENS
from tests.constraints.walks import lowest, walk


def _compile(compiler, schema: object):
    return compiler.compile(ConstraintSpec("json_schema", json.dumps(schema)))


# The constraint fuzz's find (an enum of one float near an integer), and its kin: each number as llguidance 1.9.1
# writes it back.
@pytest.mark.parametrize("schema, number, held", [
    ({"enum": [900.9999999999999]}, "900.9999999999999", "901"),
    ({"const": 12.100000000000001}, "12.100000000000001", "12.1"),
    ({"enum": ["a", 9007199254740993]}, "9007199254740993", "9007199254740992"),
    ({"const": {"a": [1, 123456789.12345679]}}, "123456789.12345679", "123456789.1234568"),
    ({"type": "number", "maximum": 900.9999999999999}, "900.9999999999999", "901"),
    ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 9007199254740993}}},
     "9007199254740993", "9007199254740992"),
])
def test_a_number_llguidance_holds_as_another_is_invalid(tiny, schema, number, held):
    with pytest.raises(ConstraintError) as caught:
        _compile(tiny, schema)
    assert caught.value.code == "invalid"
    assert caught.value.message == (f"the JSON schema's number {number} cannot be enforced exactly: llguidance holds "
                                    f"it as {held}")


@pytest.mark.parametrize("schema", [
    {"enum": [1, -3.25, 0.1, 1.5e-7, 0.30000000000000004, "x", None, True]},
    {"type": "integer", "minimum": -50, "maximum": 9007199254740992},
    # Where the words are property names or instances, not keywords, their numbers constrain nothing.
    {"type": "object", "properties": {"const": {"type": "string"}, "maximum": {"type": "boolean"}}},
    {"type": "number", "default": 900.9999999999999, "examples": [12.100000000000001]},
])
def test_numbers_llguidance_holds_exactly_compile(tiny, schema):
    _compile(tiny, schema)


def test_a_const_of_seventeen_digits_is_generated_as_that_number(tiny):
    grammar = _compile(tiny, {"const": [0.30000000000000004, 2.5]})
    result = walk(tiny, grammar, lowest, TINY_TOKENS)
    assert result.finished
    assert json.loads(result.text, parse_float=Decimal) == [Decimal("0.30000000000000004"), Decimal("2.5")]


def test_a_number_deep_in_a_schema_is_found(tiny):
    depth = 100  # serde_json, under llguidance, refuses 128 levels and more
    schema = '{"type": "array", "items": ' * depth + '{"const": 900.9999999999999}' + "}" * depth
    with pytest.raises(ConstraintError) as caught:
        tiny.compile(ConstraintSpec("json_schema", schema))
    assert caught.value.message.startswith("the JSON schema's number 900.9999999999999 cannot be enforced exactly")
