"""The JSON Schemas a Lark grammar embeds (`%json {...}`: a forced tool call's parameters, or a host's own grammar)
get the checks a json_schema constraint gets: a number llguidance would hold as another, a pattern ending in a lone
backslash (constraints/embedded_schemas.py, compiler.py)."""

from __future__ import annotations

import json

import pytest

from mlxd.constraints import ConstraintError, ConstraintSpec
from mlxd.constraints.embedded_schemas import embedded_schemas
from mlxd.constraints.schema_numbers import decimal_json
from mlxd.reply.tool_grammar import tool_call_grammar
from tests.reply.grammar_cases import SPECS
from tests.reply.grammar_support import model


def test_each_embedded_schema_is_found_as_written():
    first = '{"type": "object", "properties": {"a": {"enum": [1, "}"]}}}'
    second = '{"const": 2}'
    lark = f'start: a b\na: %json {first}\nb: %json{second} "x"\nc: %json not_json\n// %json {{broken\n'
    assert embedded_schemas(lark) == [decimal_json(first), decimal_json(second)]
    assert embedded_schemas(lark) == [json.loads(first), json.loads(second)]


@pytest.mark.parametrize("schema, found", [
    ({"enum": [900.9999999999999]}, "a %json schema's number 900.9999999999999 cannot be enforced exactly: "
                                    "llguidance holds it as 901"),
    ({"type": "string", "pattern": "ab\\\\\\"}, "a %json schema's pattern 'ab\\\\\\\\\\\\' ends in a lone backslash"),
])
def test_a_lark_grammars_schema_gets_the_json_schema_checks(tiny, schema, found):
    lark = f"start: %json {json.dumps(schema)}"
    with pytest.raises(ConstraintError) as caught:
        tiny.compile(ConstraintSpec("lark", lark))
    assert caught.value.code == "invalid" and caught.value.message.startswith(found), caught.value.message
    tiny.compile(ConstraintSpec("lark", 'start: %json {"enum": [900.5]}'))  # an exact number compiles


def test_a_forced_tool_calls_parameters_get_the_json_schema_checks():
    spec = SPECS[0]
    tiny = model(spec.name, spec.markers, spec.end)
    tool = {"type": "function", "function": {"name": "pick", "parameters": {
        "type": "object", "properties": {"n": {"enum": [900.9999999999999, 2]}}, "required": ["n"]}}}
    grammar, _ = tool_call_grammar(tiny.fmt, [tool], None, spec.prompt)
    with pytest.raises(ConstraintError) as caught:
        tiny.compile(grammar)
    assert "number 900.9999999999999 cannot be enforced exactly" in caught.value.message
