"""The JSON Schemas a Lark grammar embeds (llguidance's `%json {...}`), so that the checks a `json_schema`
constraint gets (a pattern ending in a lone backslash, a number llguidance would hold as another) apply to them too:
the forced tool-call grammars (reply/tool_grammar.py) embed each function's parameters so, and a host's own Lark
grammar may."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

_JSON_RULE = re.compile(r"%json\s*(?=\{)")


def embedded_schemas(lark: str) -> list[Any]:
    """Each `%json {...}` of `lark`, in order, parsed with its numbers as Decimal (schema_numbers.decimal_json): the
    one parse both checks read. Text that reads as such inside a string or a comment counts too (at worst a check
    refuses a grammar over a schema it does not enforce); one that is not valid JSON is left to llguidance, which
    reports it."""
    found: list[Any] = []
    decoder = json.JSONDecoder(parse_float=Decimal, parse_int=Decimal)
    for match in _JSON_RULE.finditer(lark):
        try:
            schema, _ = decoder.raw_decode(lark, match.end())
        except (ValueError, RecursionError):
            continue
        found.append(schema)
    return found
