"""Hostile chats with tools, calls, reasoning, template arguments and templates of the client's: render_chat either
renders (the ids spelling the text, client special-token strings plain unless parse_special) or raises
InvalidRequest; nothing else escapes, so the service never answers INTERNAL for a request's content."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from mlxd.errors import InvalidRequest
from mlxd.service.chat import render_chat
from mlxd_proto.v1 import inference_pb2 as pb
from tests.chat_template.chats import make_tokenizer

EOS = 2
TEXT = st.one_of(st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
                 st.sampled_from(["", "<eos>", "a<bos>b", "{{ 7*7 }}", "\U000f0000 0 \U000f0000", "get_weather"]))
JSON_VALUE = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT),
                          lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                  st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)
OBJECT_TEXT = st.dictionaries(TEXT, JSON_VALUE, max_size=3).map(json.dumps)
BAD_JSON = st.one_of(JSON_VALUE.map(json.dumps), TEXT,
                     st.sampled_from(['{"a": NaN}', "{" * 50, '{"a":' + "[" * 150 + "]" * 150 + "}"]))
NAME = st.one_of(st.sampled_from(["f", "get_weather", "a<eos>", "\U000f0000"]), TEXT.filter(bool))


def mostly(valid: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
    """Valid about fifteen times in sixteen, so that many chats get as far as the template (hypothesis favours the
    bounds of a range, so hostile is a value between them)."""
    return st.integers(0, 15).flatmap(lambda i: hostile if i == 7 else valid)


EVERYTHING = "{{ bos_token }}{{ messages | tojson }}{{ tools | tojson }}{{ extra | tojson }}{{ eos_token }}"
TEMPLATES = st.sampled_from([
    "",   # the model's
    EVERYTHING,
    "{% for m in messages %}{{ m.role }}{{ m.content }}{% for c in m.tool_calls or [] %}{{ c.function.name }}"
    "{{ c.function.arguments | tojson(indent=2) }}{% endfor %}{{ m.thinking }}{% endfor %}",
    "{% for t in tools or [] %}{{ t.function.name + t.function.description }}"
    "{% for k, v in t.function.parameters.items() %}{{ k }}{% endfor %}{% endfor %}",
    "{{ messages[5].content }}", "{{ extra.x.y }}", "{{ extra + 1 }}", "{% if %}", "{{ ''.__class__.__mro__ }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
])


def tool_named(name: str) -> st.SearchStrategy:
    schema = st.sampled_from(["", '{"type": "object", "properties": {"x": {"type": "string"}}}'])
    valid = st.one_of(
        st.builds(lambda d, p: pb.Tool(function=pb.Function(name=name, description=d, parameters=p)), TEXT, schema),
        st.builds(lambda d: pb.Tool(json=json.dumps({"name": name, "description": d})), TEXT))
    hostile = st.one_of(st.builds(lambda j: pb.Tool(json=j), BAD_JSON), st.just(pb.Tool()),
                        st.builds(lambda p: pb.Tool(function=pb.Function(name=name, parameters=p)), BAD_JSON))
    return mostly(valid, hostile)


@st.composite
def chats(draw: st.DrawFn) -> pb.ChatMessages:
    messages = []
    for _ in range(draw(st.integers(0, 3))):
        message = pb.ChatMessage(role=draw(st.sampled_from(["user", "assistant", "tool", "system"]) | TEXT),
                                 content=draw(TEXT), tool_call_id=draw(TEXT), name=draw(TEXT))
        message.tool_calls.extend(pb.ToolCall(id=draw(TEXT), name=draw(mostly(NAME, st.just(""))),
                                              arguments=draw(mostly(OBJECT_TEXT, BAD_JSON)))
                                  for _ in range(draw(st.integers(0, 2))))
        if draw(st.booleans()):
            message.reasoning_content = draw(TEXT)
        messages.append(message)
    names = draw(st.lists(NAME, max_size=2, unique=True))
    tools = [draw(tool_named(name)) for name in names]
    chat = pb.ChatMessages(messages=messages, tools=tools, chat_template=draw(TEMPLATES),
                           parse_special=draw(st.booleans()))
    if draw(st.booleans()):
        chat.add_generation_prompt = draw(st.booleans())
    choice = draw(mostly(st.sampled_from(["none", "mode"]), st.sampled_from(["bad mode", "function"])))
    if choice == "mode":
        chat.tool_choice.mode = draw(st.sampled_from([0, 1, 2] if names else [0, 1]))
    elif choice == "bad mode":
        chat.tool_choice.mode = draw(st.sampled_from([3, -1] if names else [2, 3, -1]))
    elif choice == "function":
        chat.tool_choice.function = draw(NAME)
    keys = mostly(st.sampled_from(["extra", "bos_token"]), st.sampled_from(["messages", "tools"]))
    chat.chat_template_kwargs.update(draw(st.dictionaries(keys, JSON_VALUE, max_size=2)))
    if draw(mostly(st.just(False), st.just(True))):
        chat.chat_template_kwargs.fields["extra"].number_value = draw(st.floats())
    return chat


TOKENIZER = make_tokenizer("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<eos>{% endfor %}",
                           bos="<bos>", eos="<eos>")


@settings(max_examples=300, deadline=None)
@given(chats())
def test_a_chat_renders_or_is_an_invalid_request(chat):
    try:
        rendered = render_chat(TOKENIZER, chat)
    except InvalidRequest:
        return
    assert TOKENIZER.decode(rendered.ids) == rendered.text
    if not chat.parse_special:
        # Only the template's own text makes special tokens: the model's template ends each message with <eos>.
        own = {"": len(chat.messages), EVERYTHING: 1}.get(chat.chat_template, 0)
        assert rendered.ids.count(EOS) == own
