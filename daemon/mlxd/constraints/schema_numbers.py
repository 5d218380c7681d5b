"""A JSON Schema's numbers that llguidance cannot hold exactly, found before a request is constrained by others.

llguidance (1.9.1) holds a schema's numbers as 64-bit floats and writes them back with about 16 significant digits:
`{"const": 12.100000000000001}` accepted only `12.1`, `{"enum": [900.9999999999999]}` only `901`, `{"enum":
[9007199254740993]}` only `9007199254740992`, and `{"maximum": 900.9999999999999}` let `901` through: outputs that
fail the very schema they were constrained by (found by the constraint fuzz at 15 times its size, session 48; 778
of the 5,000 floats `i * 1.1` are written back as other numbers). Such a schema is refused with INVALID_ARGUMENT
naming the number, rather than enforced as another schema.

How: the numbers a schema compares against exactly (enum and const values, numbers nested inside them too, and the
four bounds) are written as one const array, compiled by llguidance, and the bytes that const forces are read back:
each must be the schema's number as a decimal (`1e300`, which llguidance writes out digit by digit, is the same
number). Compiled grammars are cached by content, so a schema pays this once.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import llguidance

from mlxd.constraints.schema_walk import keywords

if TYPE_CHECKING:  # a TypedDict of llguidance's stubs only, absent at run time
    from llguidance._lib import JsonCompileOptions

BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
VALUES = ("enum", "const")
# compiler.json_whitespace(None): compact JSON, so a const forces every byte
COMPACT: JsonCompileOptions = {"whitespace_flexible": False, "whitespace_pattern": None}


def decimal_json(text: str) -> Any:
    """JSON text parsed with its numbers as Decimal, as written (what inexact_number compares)."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def inexact_number(schema: Any, tokenizer: llguidance.LLTokenizer,
                   limits: llguidance.LLParserLimits) -> tuple[str, str] | None:
    """The first number of `schema` (parsed, its numbers Decimal: decimal_json) that llguidance would hold as
    another, and how it writes it back; None when every number it compares against is exact (or it has none)."""
    numbers = list(dict.fromkeys(n for n in _compared_numbers(schema) if not _plainly_exact(n)))
    if not numbers:
        return None
    written = "[" + ",".join(str(n) for n in numbers) + "]"
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(f'{{"const": {written}}}', overrides=COMPACT)
    except ValueError:
        return None  # a number out of a float's range: the schema's own compile refuses it
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0, limits=limits)
    if matcher.is_error():
        return None  # past llguidance's limits: the schema's own compile says what is wrong
    try:
        held = json.loads(matcher.compute_ff_bytes(), parse_float=Decimal, parse_int=Decimal)
    except ValueError:
        return None  # not forced whole: nothing to compare against
    if not isinstance(held, list) or len(held) != len(numbers):
        return None
    for number, back in zip(numbers, held):
        if not isinstance(back, Decimal) or back != number:
            return str(number), str(back)
    return None


def _plainly_exact(number: Decimal) -> bool:
    """A number llguidance gives back as it is: at most 15 significant digits, times a power of ten from 10^-22,
    below 10^15 (found by trial: 8e-268 came back as 8.000000000000002e-268, a parse a unit of the last place off
    past the powers a float holds exactly, and 7.93486051856166e15 as 7934860518561661). Only the others are
    compiled to be compared, so common schemas pay nothing: forcing a const of 5,000 long numbers held the GIL for
    ~30 ms."""
    digits, exponent = number.normalize().as_tuple()[1:]
    return isinstance(exponent, int) and len(digits) <= 15 and exponent >= -22 and number.adjusted() <= 14


def _compared_numbers(schema: Any) -> list[Decimal]:
    """The numbers of a parsed schema (numbers as Decimal) that its outputs are compared against exactly."""
    found: list[Decimal] = []
    for key, value in keywords(schema):
        if key in VALUES:
            found.extend(_numbers_in(value))
        elif key in BOUNDS and isinstance(value, Decimal):
            found.append(value)
    return found


def _numbers_in(value: Any) -> list[Decimal]:
    """Every number inside an enum or const value (arrays and objects included)."""
    found: list[Decimal] = []
    values = [value]
    while values:
        item = values.pop()
        if isinstance(item, Decimal):
            found.append(item)
        elif isinstance(item, list):
            values.extend(item)
        elif isinstance(item, dict):
            values.extend(item.values())
    return found
