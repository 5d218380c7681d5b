"""A model with named chat templates ("default" and "tool_use", as Hermes 3 ships them in tokenizer_config.json, or
llama.cpp's tokenizer.chat_template.tool_use in a GGUF): chats with tools render with the tool_use template, as
transformers does, others with the default; parse_reply reads each template's own format."""

from __future__ import annotations

import json
import shutil

from mlxd.loading.tokenizer import load_tokenizer
from mlxd.service.chat import render_chat
from mlxd.service.reply import plan_reply
from mlxd_proto.v1 import inference_pb2 as pb
from tests.chat_template.chats import TEMPLATES, template_source
from tests.helpers.daemon_process import FIXTURES

DEFAULT = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
HERMES = "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


def _folder(tmp_path):
    shutil.copy(FIXTURES / "parity" / "llama" / "tokenizer.json", tmp_path / "tokenizer.json")
    config = {"bos_token": "<s>", "chat_template": [{"name": "default", "template": DEFAULT},
                                                   {"name": "tool_use", "template": template_source(HERMES)}]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


def _chat(tools: bool) -> pb.ChatMessages:
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Weather in Paris?")], parse_reply=True)
    if tools:
        chat.tools.append(pb.Tool(json=json.dumps(WEATHER)))
    return chat


def test_chats_with_tools_render_with_the_tool_use_template(tmp_path):
    tokenizer = load_tokenizer(_folder(tmp_path))
    assert tokenizer.chat_template == DEFAULT and tokenizer.tool_use_template == (TEMPLATES / HERMES).read_text()
    plain, with_tools = render_chat(tokenizer, _chat(False)), render_chat(tokenizer, _chat(True))
    assert plain.template == DEFAULT and plain.text == "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
    assert with_tools.template == tokenizer.tool_use_template
    assert "<tools>" in with_tools.text and "get_weather" in with_tools.text


def test_each_template_is_parsed_in_its_own_format(tmp_path):
    from mlxd.reply import reply_format
    tokenizer = load_tokenizer(_folder(tmp_path))
    formats = {source: reply_format(source, tokenizer.added_tokens)
               for source in (tokenizer.chat_template, tokenizer.tool_use_template) if source}
    assert [f.name for f in formats.values()] == ["plain", "hermes"]
    chat = _chat(True)
    plan = plan_reply(chat, render_chat(tokenizer, chat), formats, tokenizer.added_tokens, pb.GenerationOptions())
    assert plan.parser is not None
    parsed = plan.parser.feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    parsed_rest = plan.parser.finish("")
    calls = parsed.tool_calls + parsed_rest.tool_calls
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
