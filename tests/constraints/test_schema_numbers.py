"""A JSON Schema whose numbers llguidance would hold as others is refused, naming the number (constraints/
schema_numbers.py); numbers it holds exactly compile, and outputs under them are the schema's own numbers."""

from __future__ import annotations

import json
import random
from decimal import Decimal

import pytest

from mlxd.constraints import ConstraintError, ConstraintSpec, schema_numbers
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


@pytest.mark.parametrize("number, plain", [
    ("1", True), ("-3.25", True), ("0.1", True), ("1.5e-7", True), ("99999999999999", True), ("1e-22", True),
    ("120.50", True), ("0.30000000000000004", False), ("1e15", False), ("7.93486051856166e15", False),
    ("8e-268", False), ("1e-23", False), ("9007199254740993", False),
])
def test_which_numbers_are_compared(number, plain):
    assert schema_numbers._plainly_exact(Decimal(number)) is plain


def test_the_numbers_left_uncompared_come_back_exact(tiny, monkeypatch):
    """What `_plainly_exact` assumes of llguidance, tried: numbers it passes, compiled and compared anyway."""
    rng = random.Random(0)
    numbers = []
    for digits in range(1, 16):
        for _ in range(40):
            mantissa = rng.randrange(10 ** (digits - 1), 10 ** digits) * rng.choice([1, -1])
            numbers.append(Decimal(mantissa).scaleb(rng.randint(-22, 14)))
    numbers = [n for n in numbers if schema_numbers._plainly_exact(n)]
    assert len(numbers) > 400
    monkeypatch.setattr(schema_numbers, "_plainly_exact", lambda number: False)
    schema = '{"enum": [' + ",".join(str(n) for n in numbers) + "]}"
    assert schema_numbers.inexact_number(schema_numbers.decimal_json(schema), tiny.tokenizer, tiny.limits) is None
