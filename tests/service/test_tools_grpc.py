"""Tools and reasoning over gRPC on a real model (SmolLM2-135M, served by `mlxd serve`), with published templates sent
as chat_template overrides: tools and template arguments reach the template; a required or named tool call streams
as a typed ToolCall whose arguments validate against the function's schema, and the turn ends with TOOL_CALLS;
reasoning and answer text never mix; bad input gets INVALID_ARGUMENT with the template's own message."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import jsonschema
import pytest

from mlxd_client import Client, MlxdClientError, chat_messages, pb
from tests.helpers.daemon_process import start_daemon

pytestmark = [pytest.mark.real_model, pytest.mark.process]

TEMPLATES = Path(__file__).parents[1] / "fixtures" / "templates"
QWEN3 = (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text()
MISTRAL = (TEMPLATES / "Mistral-Small-3.2-24B-Instruct-2506.jinja").read_text()
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 12}},
                   "required": ["zone"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from mlxd.demo_models import fetch_model
    daemon = start_daemon(fetch_model("smollm2"), workdir=tmp_path_factory.mktemp("smollm2-tools"))
    yield daemon
    assert daemon.stop() == 0, daemon.stderr()
    assert "Traceback" not in daemon.stderr(), daemon.stderr()


def _schema(tool: dict) -> dict:
    return tool["function"]["parameters"]


@pytest.mark.parametrize("choice,seed", [("required", None), ("required", 7), ("get_time", None), ("get_time", 3)])
def test_a_forced_tool_call_streams_as_a_valid_tool_call(smollm2, choice, seed):
    chat = chat_messages(ASK, tools=[WEATHER, TIME], tool_choice=choice, chat_template=QWEN3,
                         chat_template_kwargs={"enable_thinking": False}, parse_reply=True)
    sampling = {"temperature": 0.0} if seed is None else {"temperature": 1.0, "seed": seed}
    with Client(smollm2.addr) as client:
        result = client.complete(chat=chat, max_tokens=160, timeout=120, **sampling)
    assert result.final.finish_reason == pb.FINISH_REASON_TOOL_CALLS, (result.final, result.text)
    assert result.tool_calls, result
    tools = {"get_weather": WEATHER, "get_time": TIME}
    for call in result.tool_calls:
        assert choice == "required" or call.name == choice
        jsonschema.validate(json.loads(call.arguments), _schema(tools[call.name]))
        assert call.id
    assert "<tool_call>" not in result.text and "</tool_call>" not in result.text


def test_tool_calls_come_as_they_complete_not_at_the_end(smollm2):
    chat = chat_messages(ASK, tools=[WEATHER], tool_choice="required", chat_template=QWEN3,
                         chat_template_kwargs={"enable_thinking": False}, parse_reply=True)
    with Client(smollm2.addr) as client:
        responses = list(client.generate(chat=chat, max_tokens=160, timeout=120, temperature=0.0))
    chunks = [r.chunk for r in responses if r.HasField("chunk")]
    with_calls = [i for i, c in enumerate(chunks) if c.tool_calls]
    assert with_calls and responses[-1].final.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    # The chunk that completes a call is the one that carries it (generated tokens, not a summary at the end).
    assert chunks[with_calls[0]].token_ids or with_calls[0] == len(chunks) - 1


def test_without_parse_reply_the_call_is_raw_text(smollm2):
    chat = chat_messages(ASK, tools=[WEATHER], tool_choice="get_weather", chat_template=QWEN3,
                         chat_template_kwargs={"enable_thinking": False})
    with Client(smollm2.addr) as client:
        result = client.complete(chat=chat, max_tokens=160, timeout=120, temperature=0.0)
    assert result.final.finish_reason == pb.FINISH_REASON_STOP and result.final.constraint_complete
    assert not result.tool_calls and result.text.startswith("<tool_call>\n{"), result.text
    body = result.text.removeprefix("<tool_call>\n").split("\n</tool_call>")[0]
    call = json.loads(body)
    assert call["name"] == "get_weather"
    jsonschema.validate(call["arguments"], _schema(WEATHER))


def test_reasoning_and_text_never_mix(smollm2):
    # The regex makes SmolLM2 write a Qwen3-style reply: thinking, then the answer.
    regex = r"<think>\n[a-z ]{3,30}\n</think>\n\n[A-Z][a-z ]{2,30}\."
    chat = chat_messages([{"role": "user", "content": "Say hello."}], chat_template=QWEN3, parse_reply=True)
    with Client(smollm2.addr) as client:
        raw = client.complete(chat=chat_messages([{"role": "user", "content": "Say hello."}], chat_template=QWEN3),
                              max_tokens=80, timeout=120, temperature=0.0, constraint=pb.Constraint(regex=regex))
        result = client.complete(chat=chat, max_tokens=80, timeout=120, temperature=0.0,
                                 constraint=pb.Constraint(regex=regex))
    assert raw.final.constraint_complete and result.token_ids == raw.token_ids
    thought, answer = raw.text.removeprefix("<think>\n").split("\n</think>\n\n")
    assert result.reasoning == thought and result.text == answer
    assert not result.tool_calls and result.final.finish_reason == pb.FINISH_REASON_STOP


def test_tools_and_template_arguments_reach_the_template(smollm2):
    with Client(smollm2.addr) as client:
        def rendered(**kwargs) -> str:
            ids = client.stub.Tokenize(pb.TokenizeRequest(chat=chat_messages(ASK, chat_template=QWEN3, **kwargs))).ids
            return client.detokenize(ids)
        plain, with_tools = rendered(), rendered(tools=[WEATHER])
        no_thinking = rendered(chat_template_kwargs={"enable_thinking": False})
    assert "get_weather" not in plain and '"name": "get_weather"' in with_tools and "<tools>" in with_tools
    assert plain.endswith("<|im_start|>assistant\n")
    assert no_thinking.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_model_info_names_the_reply_format(smollm2):
    with Client(smollm2.addr) as client:
        assert client.model_info().reply_format in ("plain", "think", "hermes", "qwen3")


@pytest.mark.parametrize("chat,message", [
    (chat_messages([{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "function": {"name": "get_weather", "arguments": "{not json"}}]}], chat_template=QWEN3),
     "chat.messages[0].tool_calls[0].arguments"),
    (chat_messages([*ASK, {"role": "narrator", "content": "Once upon a time"}], chat_template=MISTRAL),
     "Only system, user, assistant, and tool roles are supported!"),
    (chat_messages([{"role": "user", "content": "hi"}], chat_template="{{ raise_exception('no, thank you') }}"),
     "no, thank you"),
    (chat_messages(ASK, tools=[WEATHER], tool_choice="get_time", chat_template=QWEN3), "get_time"),
])
def test_bad_chats_get_invalid_argument_with_the_reason(smollm2, chat, message):
    with Client(smollm2.addr) as client:
        with pytest.raises(MlxdClientError) as caught:
            client.complete(chat=chat, max_tokens=4, timeout=60)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert message in caught.value.details, caught.value.details
        assert client.health() == "SERVING"


def test_special_tokens_can_be_left_out_of_the_text(smollm2):
    with Client(smollm2.addr) as client:
        im_start = client.tokenize("<|im_start|>", add_special_tokens=False, parse_special=True)
        assert len(im_start) == 1
        options = dict(prompt="Hello", max_tokens=4, temperature=0.0, ignore_eos=True,
                       logit_bias={im_start[0]: 100.0}, timeout=60)
        told = client.complete(**options)
        untold = client.complete(include_special_tokens=False, **options)
    assert told.token_ids == untold.token_ids == im_start * 4
    assert told.text == "<|im_start|>" * 4 and untold.text == ""
