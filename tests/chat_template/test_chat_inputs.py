"""ChatMessages -> template inputs (service/chat_inputs.py): the dict shapes, tool forms, tool_choice, template
arguments from a Struct, and bad input rejected with InvalidRequest naming the field."""

import json

import pytest

from mlxd.errors import InvalidRequest
from mlxd.service.chat import render_chat
from mlxd.service.chat_inputs import template_inputs
from mlxd_proto.v1 import inference_pb2 as pb
from tests.chat_template.chats import chat, make_tokenizer, message, tool

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
ASK = {"role": "user", "content": "weather?"}


def _chat(*messages: dict, tools: tuple = (), **fields: object) -> pb.ChatMessages:
    return pb.ChatMessages(messages=[message(m) for m in messages or (ASK,)], tools=list(tools), **fields)


def test_messages_carry_tool_calls_results_and_reasoning():
    inputs = template_inputs(_chat(
        ASK, {"role": "assistant", "content": "", "tool_calls": [CALL], "reasoning_content": "think"},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"temp": 21}'}))
    assert inputs.messages == [
        ASK,
        {"thinking": "think", "role": "assistant", "content": "", "tool_calls": [CALL], "reasoning_content": "think"},
        {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1", "name": "get_weather"}]
    # transformers' key order: thinking first, reasoning_content last.
    assert list(inputs.messages[1]) == ["thinking", "role", "content", "tool_calls", "reasoning_content"]
    assert inputs.tools == [] and inputs.chat_template_kwargs == {} and inputs.add_generation_prompt


def test_reasoning_is_there_only_when_set_even_empty():
    absent = template_inputs(_chat({"role": "assistant", "content": "x"})).messages[0]
    assert "reasoning_content" not in absent and "thinking" not in absent
    empty = template_inputs(_chat({"role": "assistant", "content": "x", "reasoning_content": ""})).messages[0]
    assert empty["reasoning_content"] == "" == empty["thinking"]


def test_a_call_without_arguments_has_an_empty_object():
    call = pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(id="c", name="now")])
    assert template_inputs(pb.ChatMessages(messages=[call])).messages[0]["tool_calls"][0]["function"] == \
        {"name": "now", "arguments": {}}


@pytest.mark.parametrize("form", ["function", "json", "bare"])
def test_tool_forms_become_openai_tools(form):
    assert template_inputs(_chat(tools=[tool(WEATHER, form)])).tools == [WEATHER]


def test_more_tool_forms():
    flat = {"type": "function", **WEATHER["function"]}   # OpenAI's Responses API
    untyped = {"function": {**WEATHER["function"], "name": "get_time"}, "strict": True}
    bare_fn = pb.Tool(function=pb.Function(name="now"))
    inputs = template_inputs(_chat(tools=[pb.Tool(json=json.dumps(flat)), pb.Tool(json=json.dumps(untyped)), bare_fn]))
    assert inputs.tools == [
        WEATHER,
        {"type": "function", "function": {**WEATHER["function"], "name": "get_time"}, "strict": True},
        # Templates read parameters.properties and print the description: both always there.
        {"type": "function", "function": {"name": "now", "description": "", "parameters": {"type": "object",
                                                                                          "properties": {}}}}]


@pytest.mark.parametrize("choice, tools_given", [
    (None, True),
    (pb.ToolChoice(mode=pb.TOOL_CHOICE_AUTO), True),
    (pb.ToolChoice(mode=pb.TOOL_CHOICE_REQUIRED), True),
    (pb.ToolChoice(function="get_weather"), True),
    (pb.ToolChoice(mode=pb.TOOL_CHOICE_NONE), False),
])
def test_tool_choice(choice, tools_given):
    request = _chat(tools=[tool(WEATHER)], tool_choice=choice)
    assert template_inputs(request).tools == ([WEATHER] if tools_given else [])
    request.chat_template = "{{ tools is none }}"
    rendered = render_chat(make_tokenizer(None), request)
    assert rendered.text == str(not tools_given) and rendered.tools == template_inputs(request).tools


def test_template_arguments_from_a_struct():
    request = _chat()
    request.chat_template_kwargs.update({"enable_thinking": False, "reasoning_effort": "high", "n": 3, "x": 0.5,
                                         "big": 2.0 ** 60, "none": None,
                                         "nested": {"k": 2, "list": [1, "a", True, {"d": 4.0}]}})
    kwargs = template_inputs(request).chat_template_kwargs
    assert kwargs == {"enable_thinking": False, "reasoning_effort": "high", "n": 3, "x": 0.5, "big": 2.0 ** 60,
                      "none": None, "nested": {"k": 2, "list": [1, "a", True, {"d": 4}]}}
    assert type(kwargs["n"]) is int and type(kwargs["big"]) is float and type(kwargs["nested"]["list"][3]["d"]) is int
    request.chat_template = "{{ n }}|{{ x }}|{{ nested.list | tojson }}|{{ enable_thinking }}|{{ reasoning_effort }}"
    assert render_chat(make_tokenizer(None), request).text == '3|0.5|[1, "a", true, {"d": 4}]|False|high'


def _assistant_calling(arguments: str) -> pb.ChatMessage:
    return pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(id="c", name="f", arguments=arguments)])


def _with_number(number: float) -> pb.ChatMessages:
    request = _chat()
    request.chat_template_kwargs.fields["temperature"].number_value = number
    return request


@pytest.mark.parametrize("request_, message", [
    (pb.ChatMessages(messages=[message(ASK), _assistant_calling('{"city": "Par')]),
     r"chat.messages\[1\].tool_calls\[0\].arguments is not a JSON object: Unterminated string"),
    (pb.ChatMessages(messages=[message(ASK), _assistant_calling('["Paris"]')]),
     r"chat.messages\[1\].tool_calls\[0\].arguments is not a JSON object: it holds a list"),
    (pb.ChatMessages(messages=[_assistant_calling('{"x": NaN}')]),
     r"chat.messages\[0\].tool_calls\[0\].arguments is not a JSON object: NaN is not JSON"),
    (pb.ChatMessages(messages=[pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(id="c", arguments="{}")])]),
     r"chat.messages\[0\].tool_calls\[0\].name is empty"),
    (_chat(tools=[pb.Tool(json='{"name": "f",')]), r"chat.tools\[0\].json is not a JSON object: Expecting"),
    (_chat(tools=[pb.Tool(json='"f"')]), r"chat.tools\[0\].json is not a JSON object: it holds a str"),
    (_chat(tools=[tool(WEATHER), pb.Tool(function=pb.Function(name="g", parameters="[]"))]),
     r"chat.tools\[1\].function.parameters is not a JSON object: it holds a list"),
    (_chat(tools=[pb.Tool(function=pb.Function(description="no name"))]), r"chat.tools\[0\].function.name is empty"),
    (_chat(tools=[pb.Tool(json='{"description": "no name"}')]),
     r"chat.tools\[0\].json.name must be a non-empty string, not None"),
    (_chat(tools=[pb.Tool(json='{"type": "function", "function": {"name": ""}}')]),
     r"chat.tools\[0\].json.function.name must be a non-empty string, not ''"),
    (_chat(tools=[pb.Tool(json='{"type": "function", "function": "f"}')]),
     r"chat.tools\[0\].json.function is not a JSON object"),
    (_chat(tools=[pb.Tool(json='{"type": "retrieval", "function": {"name": "f"}}')]),
     r"chat.tools\[0\].json has type 'retrieval'; only function tools are supported"),
    (_chat(tools=[pb.Tool(json='{"name": "f", "parameters": "x"}')]), r"chat.tools\[0\].json.parameters is not"),
    (_chat(tools=[pb.Tool(json='{"name": "f", "description": 3}')]), r"chat.tools\[0\].json.description is not"),
    (_chat(tools=[pb.Tool()]), r"chat.tools\[0\] is empty: it needs a function or json"),
    (_chat(tools=[tool(WEATHER), tool(WEATHER, "bare")]), r"chat.tools\[1\] repeats the function name 'get_weather'"),
    (_chat(tools=[tool(WEATHER)], tool_choice=pb.ToolChoice(function="get_time")),
     r"chat.tool_choice.function 'get_time' is not one of chat.tools \['get_weather'\]"),
    (_chat(tool_choice=pb.ToolChoice(function="get_weather")), r"chat.tool_choice.function 'get_weather' is not one"),
    (_chat(tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_REQUIRED)),
     "chat.tool_choice.mode is TOOL_CHOICE_REQUIRED but chat.tools is empty"),
    (_chat(tools=[tool(WEATHER)], tool_choice=pb.ToolChoice(mode=7)), "chat.tool_choice.mode 7 is not a known mode"),
    (_with_number(float("nan")), "chat.chat_template_kwargs.temperature is nan, not a finite number"),
    (_with_number(float("inf")), "chat.chat_template_kwargs.temperature is inf, not a finite number"),
])
def test_bad_input_is_an_invalid_request_naming_the_field(request_, message):
    with pytest.raises(InvalidRequest, match=message):
        template_inputs(request_)
    with pytest.raises(InvalidRequest, match=message):   # and so is the request rendered
        render_chat(make_tokenizer("{{ messages }}"), request_)


@pytest.mark.parametrize("name", ["messages", "tools", "add_generation_prompt"])
def test_reserved_template_arguments(name):
    request = chat({"messages": [ASK], "chat_template_kwargs": {name: True}})
    with pytest.raises(InvalidRequest, match=f"chat_template_kwargs cannot set '{name}'"):
        render_chat(make_tokenizer("{{ messages }}"), request)


def test_a_template_that_raises_names_its_own_message():
    request = chat({"messages": [ASK, {"role": "assistant", "content": "", "tool_calls": [CALL]}]},
                   chat_template="{% for m in messages %}{% for c in m.tool_calls or [] %}{% if c.id | length != 9 %}"
                                 "{{ raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}"
                                 "{% endif %}{% endfor %}{% endfor %}")
    with pytest.raises(InvalidRequest, match="^the chat template rejected the messages: Tool call IDs should be "
                                             "alphanumeric strings with length 9!$"):
        render_chat(make_tokenizer(None), request)


def test_an_override_that_does_not_compile_or_is_too_large():
    with pytest.raises(InvalidRequest, match="chat_template does not compile: .*endfor"):
        render_chat(make_tokenizer("{{ messages }}"), chat({"messages": [ASK]}, chat_template="{% for m in x %}"))
    with pytest.raises(InvalidRequest, match="chat_template has 131073 bytes; at most 131072"):
        render_chat(make_tokenizer("{{ messages }}"), chat({"messages": [ASK]}, chat_template="x" * 131073))
