"""Specs, compiling each kind, llguidance's messages for bad sources, the size and work limits, the cache."""

from __future__ import annotations

import json
import threading

import llguidance
import pytest

from mlxd.constraints import MAX_SOURCE_BYTES, ConstraintError, ConstraintSpec, GrammarCompiler, lone_escapes
from mlxd.constraints.spec import DEFAULT_MAX_WHITESPACE, MAX_WHITESPACE_LIMIT
from tests.constraints.conftest import TINY_EOS, TINY_WIDTH

SOURCES = {
    "json_schema": json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}),
    "json_object": "",
    "regex": r"[a-c]{2,4}-\d+",
    "lark": 'start: "(" NUM ("," NUM)* ")"\nNUM: /[0-9]+/',
    "gbnf": 'root ::= "a" [0-9]+',
}


def test_the_key_names_what_changes_the_grammar():
    schema = SOURCES["json_schema"]
    assert ConstraintSpec("json_schema", schema).key != ConstraintSpec("json_schema", schema, after="</think>").key
    default = ConstraintSpec("json_schema", schema, DEFAULT_MAX_WHITESPACE)
    assert ConstraintSpec("json_schema", schema).key == default.key
    assert ConstraintSpec("json_schema", schema).key != ConstraintSpec("json_schema", schema, 2).key
    assert ConstraintSpec("regex", "a+").key == ConstraintSpec("regex", "a+", 2).key  # not JSON: no whitespace bound
    assert ConstraintSpec("regex", "a+").key != ConstraintSpec("lark", "a+").key
    assert ConstraintSpec("regex", "a+", after="x").after == "x"


@pytest.mark.parametrize("kind, source, settings", [
    ("yaml", "a: 1", {}),
    ("json_object", "{}", {}),
    ("regex", "", {}),
    ("json_schema", "{}", {"max_whitespace": -1}),
    ("json_schema", "{}", {"max_whitespace": MAX_WHITESPACE_LIMIT + 1}),
])
def test_malformed_specs_are_invalid(kind, source, settings):
    with pytest.raises(ConstraintError) as caught:
        ConstraintSpec(kind, source, **settings)
    assert caught.value.code == "invalid"


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_each_kind_compiles(tiny, kind):
    grammar = tiny.compile(ConstraintSpec(kind, SOURCES[kind]))
    assert grammar.kind == kind
    assert grammar.width == TINY_WIDTH and grammar.mask_words == (TINY_WIDTH + 31) // 32
    assert grammar.eos_token_ids == tuple(TINY_EOS)


@pytest.mark.parametrize("kind, source, message", [
    ("json_schema", "{not json", "not valid JSON"),
    ("json_schema", '{"type": "frob"}', "Invalid type: frob"),
    ("json_schema", "[1, 2]", "must be an object or a boolean"),
    ("json_schema", "false", "allows no value"),
    ("json_schema", '{"type": "object", "dependentSchemas": {"a": {}}}', "Unimplemented keys"),
    ("json_schema", '{"type": "string", "format": "zzz"}', "Unknown format: zzz"),
    ("json_schema", '{"$ref": "#/$defs/missing"}', "does not exist"),
    ("regex", "a(b", "unclosed group"),
    ("lark", "start: foo", 'unknown name: "foo"'),
    ("lark", "start: (", "Expected token"),
    ("gbnf", "root ::= (", "Expected ')'"),
    ("gbnf", "root ::= missing", "missing"),
])
def test_bad_sources_are_invalid_with_llguidances_message(tiny, kind, source, message):
    with pytest.raises(ConstraintError) as caught:
        tiny.compile(ConstraintSpec(kind, source))
    assert caught.value.code == "invalid"
    assert message in caught.value.message


def test_llguidance_validates_what_we_call_invalid(tiny):
    # The message we carry is llguidance's own: validate_grammar says the same of the same grammar.
    grammar = llguidance.LLMatcher.grammar_from_json_schema('{"type": "frob"}')
    assert llguidance.LLMatcher.validate_grammar(grammar, tiny.tokenizer) in str(
        pytest.raises(ConstraintError, tiny.compile, ConstraintSpec("json_schema", '{"type": "frob"}')).value)


@pytest.mark.parametrize("kind, source", [
    ("regex", "a" * (MAX_SOURCE_BYTES + 1)),
    ("json_schema", json.dumps({"type": "string", "description": "é" * (MAX_SOURCE_BYTES // 2)})),  # bytes, not chars
    ("lark", 'start: "' + "a" * MAX_SOURCE_BYTES + '"'),
])
def test_oversize_sources_are_too_large(tiny, kind, source):
    with pytest.raises(ConstraintError) as caught:
        tiny.compile(ConstraintSpec(kind, source))
    assert caught.value.code == "too_large"
    assert str(MAX_SOURCE_BYTES) in caught.value.message


def test_nesting_past_the_recursion_is_too_large(tiny):
    with pytest.raises(ConstraintError) as caught:
        tiny.compile(ConstraintSpec("json_schema", "[" * 100_000 + "]" * 100_000))
    assert caught.value.code == "too_large"


def test_llguidance_limits_make_too_large(tiny_json):
    tight = GrammarCompiler(tiny_json, TINY_WIDTH, TINY_EOS, limits=llguidance.LLParserLimits(max_grammar_size=50))
    schema = json.dumps({"type": "object", "properties": {f"k{i}": {"type": "string"} for i in range(40)}})
    with pytest.raises(ConstraintError) as caught:
        tight.compile(ConstraintSpec("json_schema", schema))
    assert caught.value.code == "too_large"
    assert "grammar size" in caught.value.message and "too big" in caught.value.message
    tight.compile(ConstraintSpec("regex", "ab"))  # small grammars still fit


def test_the_cache_returns_one_grammar_per_spec(tiny):
    first = tiny.compile(ConstraintSpec("regex", "[0-9]{3}"))
    assert tiny.compile(ConstraintSpec("regex", "[0-9]{3}")) is first
    after = tiny.compile(ConstraintSpec("regex", "[0-9]{3}", after="</think>"))
    assert after is not first and tiny.compile(ConstraintSpec("regex", "[0-9]{3}", after="</think>")) is after
    assert tiny.compile(ConstraintSpec("regex", "[0-9]{4}")) is not first


def test_the_cache_is_bounded_least_recently_used_first(tiny_json):
    compiler = GrammarCompiler(tiny_json, TINY_WIDTH, TINY_EOS, cache_entries=2)
    a, b = (compiler.compile(ConstraintSpec("regex", f"a{{{n}}}")) for n in (1, 2))
    assert compiler.compile(ConstraintSpec("regex", "a{1}")) is a  # a is now the most recent
    compiler.compile(ConstraintSpec("regex", "a{3}"))  # evicts b
    assert compiler.cached() == 2
    assert compiler.compile(ConstraintSpec("regex", "a{1}")) is a
    assert compiler.compile(ConstraintSpec("regex", "a{2}")) is not b


def test_failures_are_cached_and_raised_afresh(tiny):
    spec = ConstraintSpec("regex", "(unclosed")
    errors = [pytest.raises(ConstraintError, tiny.compile, spec).value for _ in range(2)]
    assert errors[0] is not errors[1]
    assert (errors[0].code, errors[0].message) == (errors[1].code, errors[1].message)


def test_threads_compiling_the_same_spec_share_one_grammar(tiny_json):
    compiler = GrammarCompiler(tiny_json, TINY_WIDTH, TINY_EOS)
    specs = [ConstraintSpec("json_schema", json.dumps({"type": "array", "items": {"type": "integer"}, "maxItems": n}))
             for n in (1, 2)] * 4 + [ConstraintSpec("regex", "(bad")] * 2
    start = threading.Barrier(len(specs))
    results: list[object] = [None] * len(specs)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = compiler.compile(specs[i])
        except ConstraintError as exc:
            results[i] = exc.code

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(specs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[i] is results[0] for i in range(0, 8, 2))
    assert all(results[i] is results[1] for i in range(1, 8, 2))
    assert results[0] is not results[1]
    assert results[8:] == ["invalid", "invalid"]
    assert compiler.cached() == 3


def test_a_grammar_that_allows_nothing_is_invalid(tiny):
    with pytest.raises(ConstraintError) as caught:
        tiny.compile(ConstraintSpec("json_schema", '{"type": "integer", "minimum": 5, "maximum": 4}'))
    assert caught.value.code == "invalid"


@pytest.mark.parametrize("pattern, lone", [("ab\\", True), ("ab\\\\", False), ("ab\\\\\\", True), ("a\\/b", False),
                                           ("", False), ("\\", True)])
def test_a_regex_ending_in_an_escape_of_nothing_is_found(pattern, lone):
    assert lone_escapes.ends_in_lone_backslash(pattern) is lone


def test_a_schemas_patterns_are_found_where_they_stand():
    schema = {"type": "object", "properties": {"pattern": {"type": "string", "pattern": "^a$"}},
              "patternProperties": {"^x": {"items": {"pattern": "b+"}}}, "enum": [{"pattern": "instance"}],
              "default": {"pattern": "instance"}}
    assert sorted(lone_escapes.schema_patterns(schema)) == ["^a$", "^x", "b+"]
