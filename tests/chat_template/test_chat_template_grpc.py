"""Over gRPC, through the real server and servicer (in-process, a fake engine): a chat's tools, tool calls, template
arguments and template override reach the template in Tokenize and Generate, and bad ones are INVALID_ARGUMENT."""

import json

import grpc
import pytest

from mlxd.loading.tokenizer import load_tokenizer
from mlxd_client import Client, pb
from tests.availability.inprocess import LLAMA, FakeEngine, serving

# Prints what the template was given: the tools, the calls' arguments, two template arguments, the last message.
OVERRIDE = ("{{ bos_token }}{% for t in tools %}[{{ t.function.name }}: {{ t.function.parameters | tojson }}]"
            "{% endfor %}|{{ reasoning_effort }}|{{ max_calls }}|{% for m in messages %}"
            "{% for c in m.tool_calls or [] %}{{ c.function.name }}{{ c.function.arguments | tojson }}{% endfor %}"
            "{% endfor %}|{{ messages[-1].content }}{{ eos_token }}")
EXPECTED = ('<bos>[get_weather: {"type": "object", "properties": {"city": {"type": "string"}}}]|high|3|'
            'get_weather{"city": "Paris"}|{"temp": 21}<eos>')
SCHEMA = json.dumps({"type": "object", "properties": {"city": {"type": "string"}}})


def _chat(arguments: str = '{"city": "Paris"}', template: str = OVERRIDE) -> pb.ChatMessages:
    chat = pb.ChatMessages(
        messages=[pb.ChatMessage(role="user", content="Weather in Paris?"),
                  pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(id="call_1", name="get_weather",
                                                                           arguments=arguments)]),
                  pb.ChatMessage(role="tool", tool_call_id="call_1", name="get_weather", content='{"temp": 21}')],
        tools=[pb.Tool(function=pb.Function(name="get_weather", description="Current weather", parameters=SCHEMA))],
        chat_template=template)
    chat.chat_template_kwargs.update({"reasoning_effort": "high", "max_calls": 3})
    return chat


@pytest.fixture(scope="module")
def served():
    with serving(FakeEngine(tokens=1)) as served:
        yield served


@pytest.fixture()
def client(served):
    with Client(served.addr) as c:
        yield c


def test_tools_and_template_arguments_reach_the_override(served, client):
    response = client.stub.Tokenize(pb.TokenizeRequest(chat=_chat()))
    tokenizer = load_tokenizer(LLAMA)
    assert list(response.ids) == tokenizer.encode(EXPECTED, add_special_tokens=False)
    assert tokenizer.decode(list(response.ids)) == EXPECTED
    # Generate renders the same prompt.
    list(client.stub.Generate(pb.GenerateRequest(chat=_chat())))
    assert served.engine.submitted[-1].prompt_ids == list(response.ids)


def test_without_an_override_the_models_template_renders(client):
    tokenizer = load_tokenizer(LLAMA)
    ids = client.stub.Tokenize(pb.TokenizeRequest(chat=_chat(template=""))).ids
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Weather in Paris?"},
                                              {"role": "assistant", "content": ""},
                                              {"role": "tool", "content": '{"temp": 21}'}])
    assert list(ids) == tokenizer.encode(rendered, add_special_tokens=False)


@pytest.mark.parametrize("chat, message", [
    (_chat(arguments='{"city": '), "chat.messages[1].tool_calls[0].arguments is not a JSON object"),
    (_chat(template="{% if %}"), "chat_template does not compile"),
    (_chat(template="{{ raise_exception('no tools here') }}"),
     "the chat template rejected the messages: no tools here"),
    (pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="hi")],
                     tool_choice=pb.ToolChoice(function="get_time")), "chat.tool_choice.function 'get_time'"),
])
def test_bad_chats_are_invalid_arguments(client, chat, message):
    for call in (lambda: client.stub.Tokenize(pb.TokenizeRequest(chat=chat)),
                 lambda: list(client.stub.Generate(pb.GenerateRequest(chat=chat)))):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in raised.value.details()
