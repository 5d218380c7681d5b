"""The pieces under the parsers: marker search and hold-back, JSON calls, Llama's built-in calls, Gemma's syntax."""

from __future__ import annotations

import pytest

from mlxd.reply.calls import arguments_text, calls_from_json, calls_from_json_sequence
from mlxd.reply.gemma_args import MAX_DEPTH, parse_gemma_call
from mlxd.reply.llama3 import builtin_call
from mlxd.reply.scanner import first_marker, held_start


def test_the_earliest_marker_wins_and_the_longer_of_two_at_one_place():
    assert first_marker("a</think>\n\nb", ["</think>", "\n\n"]) == (1, "</think>")
    assert first_marker("a\n</think>", ["</think>", "\n</think>"]) == (1, "\n</think>")
    assert first_marker("nothing here", ["<x>"]) is None


@pytest.mark.parametrize("text, start", [
    ("abc<|chan", 3), ("abc<", 3), ("abc", 3), ("abc<|channel|", 3), ("<|channel|>", 11), ("a\n", 1),
])
def test_the_held_tail_is_the_longest_that_could_still_become_a_marker(text, start):
    assert held_start(text, ["<|channel|>", "\n</think>"]) == start


def test_arguments_are_an_object_or_a_string_holding_one():
    assert arguments_text({"a": "é"}) == '{"a": "é"}'
    assert arguments_text('{"a": 1}') == '{"a": 1}'
    assert arguments_text("[1]") is None
    assert arguments_text(3) is None


@pytest.mark.parametrize("text", [
    '{"name": "f", "arguments": {"x": NaN}}', '{"name": "", "arguments": {}}', '{"name": 3}', "[]",
    '[{"name": "f"}, 3]', "[" * 100_000,
])
def test_what_is_no_call(text):
    assert calls_from_json(text) is None


def test_llama_needs_its_arguments_key_and_takes_calls_in_a_row():
    assert calls_from_json('{"name": "Alice"}', arguments_required=True) is None
    calls = calls_from_json_sequence('{"name": "f", "parameters": {}} ;\n{"name": "g", "arguments": {"a": 1}}',
                                     arguments_required=True)
    assert calls is not None and [(c.name, c.arguments) for c in calls] == [("f", "{}"), ("g", '{"a": 1}')]
    assert calls_from_json_sequence('{"name": "f", "parameters": {}} trailing', arguments_required=True) is None
    assert calls_from_json_sequence('; {"name": "f", "parameters": {}}', arguments_required=True) is None


@pytest.mark.parametrize("text, name, arguments", [
    ('brave_search.call(query="a b")', "brave_search", '{"query": "a b"}'),
    ("wolfram_alpha.call(query='x', n=2, xs=(1, 2))", "wolfram_alpha", '{"query": "x", "n": 2, "xs": [1, 2]}'),
])
def test_builtin_calls(text, name, arguments):
    call = builtin_call(text)
    assert call is not None and (call.name, call.arguments) == (name, arguments)


@pytest.mark.parametrize("text", [
    "import math\nprint(math.pi)", "f.call(1)", "f.call(**x)", "f.go(a=1)", "a.b.call(a=1)", "f.call(a=b)",
    "f.call(a={1, 2})", "f.call(a=float('nan'))", "f.call(a=1e999)", "(" * 1000,
])
def test_builtin_calls_refuse_anything_else(text):
    assert builtin_call(text) is None


def test_gemma_syntax():
    assert parse_gemma_call('call:f{a:<|"|>x, y: {z}<|"|>, "b": "q\\"", c : None,d:[]}') == (
        "f", {"a": "x, y: {z}", "b": 'q"', "c": None, "d": []})
    assert parse_gemma_call("call:f{}") == ("f", {})


@pytest.mark.parametrize("body", [
    "call:f", "call:f{a:1", "call:f{a:1}}", "f{a:1}", "call:f{a:word}", 'call:f{a:<|"|>open}', "call:f[1]",
    "call:f{:1}", "call:f{a:1,}", "call:f{a:" + "[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2) + "}",
])
def test_gemma_syntax_refuses_malformed_calls(body):
    assert parse_gemma_call(body) is None
