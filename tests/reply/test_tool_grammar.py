"""Forced tool-call grammars: each compiles on a tokenizer holding its format's markers, accepts a correct call
(and reads back as that call), refuses another function, arguments off the schema and calls in excess, and lets a
reasoning model reason first where the prompt leaves reasoning on."""

from __future__ import annotations

import json

import jsonschema
import pytest

from mlxd.constraints import ConstraintError
from mlxd.reply import ReplyFormat
from mlxd.reply.tool_grammar import tool_call_grammar
from tests.constraints.walks import finished_seeded_walk
from tests.reply.grammar_cases import (
    GEMMA_MARKERS,
    HARMONY_MARKERS,
    QWEN_MARKERS,
    QWEN_OFF,
    SPEC_IDS,
    SPECS,
    TIME,
    TOOLS,
    WEATHER,
    Spec,
    gemma_arguments,
)
from tests.reply.grammar_support import model
from tests.reply.streaming import parse

PARIS = ("get_weather", {"city": "Paris"})
UTC = ("get_time", {"zone": "UTC"})


def _forced(spec: Spec, function: str | None = None, tools: list | None = None):
    tiny = model(spec.name, spec.markers, spec.end)
    grammar, after = tool_call_grammar(tiny.fmt, TOOLS if tools is None else tools, function, spec.prompt)
    assert after == ""
    return tiny, tiny.compile(grammar)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_a_correct_call_is_accepted_and_read_back(spec):
    tiny, grammar = _forced(spec)
    for call in (PARIS, UTC):
        text = spec.calls(call)
        assert tiny.accepts(grammar, text), text
        assert parse(tiny.fmt, spec.prompt, list(text), spec.stop).outcome() == ("", "", [call])


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_calls_in_excess_are_refused(spec):
    tiny, grammar = _forced(spec)
    two = spec.calls(PARIS, UTC)
    assert tiny.accepts(grammar, two) == spec.several
    if spec.several:
        assert parse(tiny.fmt, spec.prompt, [two], spec.stop).outcome() == ("", "", [PARIS, UTC])
    _, named = _forced(spec, "get_weather")
    assert tiny.accepts(named, spec.calls(PARIS))
    assert not tiny.accepts(named, spec.calls(PARIS, PARIS))


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_another_function_is_refused(spec):
    tiny, named = _forced(spec, "get_weather")
    assert not tiny.accepts(named, spec.calls(UTC))
    _, any_tool = _forced(spec)
    assert not tiny.accepts(any_tool, spec.calls(("get_wether", {"city": "Paris"})))
    assert not tiny.accepts(any_tool, "Sunny.")


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@pytest.mark.parametrize("call", [
    ("get_weather", {"city": 3}), ("get_weather", {}), ("get_time", {"zone": "PST"}),
    ("get_time", {"zone": "UTC", "extra": "x"}),
])
def test_arguments_off_the_schema_are_refused(spec, call):
    tiny, grammar = _forced(spec)
    assert not tiny.accepts(grammar, spec.calls(call))


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@pytest.mark.parametrize("seed", range(3))
def test_random_walks_read_back_as_valid_calls(spec, seed):
    tiny, grammar = _forced(spec)
    text = finished_seeded_walk(tiny.compiler, grammar, seed, '"}]', tiny.compiler.width, max_steps=4000)
    got = parse(tiny.fmt, spec.prompt, [text], spec.stop)
    assert got.text == "" and got.reasoning == "" and got.calls, text
    schemas = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
    for call in got.calls:
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])


def test_qwen3_reasons_first_through_the_after_marker_when_its_tags_are_text():
    tiny = model("qwen3", [], "<|im_end|>")  # no tag is a token
    grammar, after = tool_call_grammar(tiny.fmt, [WEATHER], None, "<|im_start|>assistant\n")
    assert after == "</think>"
    compiled = tiny.compile(grammar, after)
    text = "<think>\nRain?\n</think>\n\n" + SPECS[0].calls(PARIS)
    assert tiny.accepts(compiled, text)
    assert parse(tiny.fmt, "<|im_start|>assistant\n", [text]).outcome() == ("", "Rain?", [PARIS])


@pytest.mark.parametrize("name, prompt, reply, accepted", [
    ("qwen3", "<|im_start|>assistant\n", "<think>\nRain?\n</think>\n\n", True),
    ("qwen3", "<|im_start|>assistant\n", "", False),  # thinking on: the reasoning closes before the call
    ("qwen3", QWEN_OFF, "<think>\nRain?\n</think>\n\n", False),
    ("qwq", "<|im_start|>assistant\n<think>\n", "Rain?\n</think>\n\n", True),
    ("qwq", "<|im_start|>assistant\n<think>\n", "", False),
])
def test_reasoning_tokens_are_part_of_the_grammar(name, prompt, reply, accepted):
    tiny = model(name, QWEN_MARKERS, "<|im_end|>")
    grammar, after = tool_call_grammar(tiny.fmt, [WEATHER], None, prompt)
    assert after == ""
    text = reply + SPECS[0].calls(PARIS)
    assert tiny.accepts(tiny.compile(grammar), text) == accepted
    if accepted:
        assert parse(tiny.fmt, prompt, list(text)).outcome() == ("", "Rain?", [PARIS])


def test_harmony_may_analyse_before_its_call():
    tiny = model("harmony", HARMONY_MARKERS, "<|endoftext|>")
    grammar, _ = tool_call_grammar(tiny.fmt, TOOLS, "get_weather", "<|start|>assistant")
    compiled = tiny.compile(grammar)
    for header in ("<|channel|>commentary to=functions.get_weather <|constrain|>json",
                   " to=functions.get_weather<|channel|>commentary json"):
        text = "<|channel|>analysis<|message|>Rain?<|end|><|start|>assistant" + header + '<|message|>{"city": "Paris"}'
        assert tiny.accepts(compiled, text), text
        assert parse(tiny.fmt, "<|start|>assistant", list(text), "<|call|>").outcome() == ("", "Rain?", [PARIS])
    assert not tiny.accepts(compiled, '<|channel|>final<|message|>{"city": "Paris"}')


@pytest.mark.parametrize("prompt, accepted", [("<|turn>model\n", True), ("<|turn>model\n<|channel>thought\n<channel|>",
                                                                          False)])
def test_gemma4_thinks_first_only_when_the_prompt_leaves_thinking_on(prompt, accepted):
    tiny = model("gemma4", GEMMA_MARKERS, "<turn|>")
    grammar, _ = tool_call_grammar(tiny.fmt, [WEATHER], None, prompt)
    text = "<|channel>thought\nRain?<channel|>" + SPECS[-1].calls(PARIS)
    assert tiny.accepts(tiny.compile(grammar), text) == accepted
    if accepted:
        assert parse(tiny.fmt, prompt, list(text)).outcome() == ("", "Rain?", [PARIS])


REF_TOOL = {"type": "function", "function": {"name": "move", "parameters": {
    "type": "object", "properties": {"to": {"$ref": "#/$defs/point"}}, "required": ["to"],
    "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}}}


@pytest.mark.parametrize("spec", [s for s in SPECS if s.name != "gemma4"], ids=SPEC_IDS[:-1])
def test_local_refs_still_resolve_inside_the_call(spec):
    tiny, grammar = _forced(spec, tools=[REF_TOOL])
    assert tiny.accepts(grammar, spec.calls(("move", {"to": {"x": 1}})))
    assert not tiny.accepts(grammar, spec.calls(("move", {"to": {"x": "1"}})))


PLAN = {"type": "function", "function": {"name": "plan", "parameters": {
    "type": "object",
    "properties": {"days": {"type": "integer", "description": "how long"},
                   "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                   "mode": {"enum": ["a", 1, True]},
                   "note": {"type": ["string", "null"]},
                   "place": {"$ref": "#/$defs/place"}},
    "required": ["days"],
    "$defs": {"place": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 5}},
                        "required": ["city"]}}}}}
Q = '<|"|>'


@pytest.mark.parametrize("arguments, accepted", [
    ("{days:3}", True),
    (f"{{days:3,mode:1,note:null,place:{{city:{Q}Paris{Q}}},tags:[{Q}a{Q},{Q}b{Q}]}}", True),
    (f"{{days:-2,mode:{Q}a{Q},note:{Q}x{Q}}}", True),
    ("{}", False),
    ("{days:1.5}", False),
    (f"{{days:3,tags:[{Q}a{Q},{Q}b{Q},{Q}c{Q}]}}", False),
    (f"{{days:3,place:{{city:{Q}Parisx{Q}}}}}", False),
    ("{mode:1,days:3}", False),  # the template writes keys sorted
    (f"{{days:3,mode:{Q}b{Q}}}", False),
    ("{days:3,other:1}", False),
])
def test_gemma4_arguments_follow_the_schema(arguments, accepted):
    tiny = model("gemma4", GEMMA_MARKERS, "<turn|>")
    grammar, _ = tool_call_grammar(tiny.fmt, [PLAN], "plan", "<|turn>model\n<|channel>thought\n<channel|>")
    text = f"<|tool_call>call:plan{arguments}<tool_call|>"
    assert tiny.accepts(tiny.compile(grammar), text) == accepted
    if accepted:
        (call,) = parse(tiny.fmt, "", [text]).calls
        jsonschema.validate(json.loads(call.arguments), PLAN["function"]["parameters"])


def test_gemma4_refuses_schema_keywords_it_cannot_enforce():
    tiny = model("gemma4", GEMMA_MARKERS, "<turn|>")
    bounded = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}
    with pytest.raises(ConstraintError, match="'minimum'.*'f'"):
        tool_call_grammar(tiny.fmt, [bounded], None, "")
    no_quote = model("gemma4", GEMMA_MARKERS[:-1], "<turn|>")
    with pytest.raises(ConstraintError, match="needs <|\"|>"):
        tool_call_grammar(no_quote.fmt, [WEATHER], None, "")
    assert gemma_arguments({"b": 1, "a": "x"}) == '{a:<|"|>x<|"|>,b:1}'


@pytest.mark.parametrize("fmt", [ReplyFormat("plain"), ReplyFormat("think")])
def test_formats_without_tool_calls_cannot_be_forced(fmt):
    with pytest.raises(ConstraintError, match="no tool-call syntax"):
        tool_call_grammar(fmt, TOOLS, None, "")


@pytest.mark.parametrize("tools, function, message", [
    ([], None, "at least one tool"),
    (TOOLS, "get_wether", "'get_wether', which is not among the tools"),
    ([{"type": "function", "function": {"name": "a b"}}], None, "no valid function name"),
    ([{"type": "retrieval"}], None, "not a function tool"),
    ([{"type": "function", "function": {"name": "f", "parameters": []}}], None, "not a JSON Schema object"),
])
def test_bad_tools_are_invalid(tools, function, message):
    with pytest.raises(ConstraintError, match=message) as caught:
        tool_call_grammar(ReplyFormat("hermes"), tools, function, "")
    assert caught.value.code == "invalid"


@pytest.mark.parametrize("function", [{"name": "ping"}, {"name": "ping", "parameters": {}},
                                      {"name": "ping", "parameters": True}])
def test_a_function_without_parameters_takes_any_object(function):
    spec = SPECS[0]
    tiny, grammar = _forced(spec, tools=[{"type": "function", "function": function}, TIME])
    assert tiny.accepts(grammar, spec.calls(("ping", {})))
    assert tiny.accepts(grammar, spec.calls(("ping", {"any": [1]})))
    assert not tiny.accepts(grammar, '<tool_call>\n{"name": "ping", "arguments": "x"}\n</tool_call>')
