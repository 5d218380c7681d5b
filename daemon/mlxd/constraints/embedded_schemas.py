"""The JSON Schemas a Lark grammar embeds (llguidance's `%json {...}`), so that the checks a `json_schema`
constraint gets (a pattern ending in a lone backslash, a number llguidance would hold as another) apply to them too:
the forced tool-call grammars (reply/tool_grammar.py) embed each function's parameters so, and a host's own Lark
grammar may."""

from __future__ import annotations

import json
import re

_JSON_RULE = re.compile(r"%json\s*(?=\{)")


def embedded_schemas(lark: str) -> list[str]:
    """The JSON text of each `%json {...}` in `lark`, in order. Text that reads as such inside a string or a comment
    counts too (at worst a check refuses a grammar over a schema it does not enforce); one that is not valid JSON is
    left to llguidance, which reports it."""
    found: list[str] = []
    decoder = json.JSONDecoder()
    for match in _JSON_RULE.finditer(lark):
        try:
            _, end = decoder.raw_decode(lark, match.end())
        except (ValueError, RecursionError):
            continue
        found.append(lark[match.end():end])
    return found
