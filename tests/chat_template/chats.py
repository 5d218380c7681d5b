"""Builders for the chat template tests: a Tokenizer with any template (bos "<BOS>", eos "<EOS>", a fixed clock, as
make_expected.py renders with transformers) and pb.ChatMessages from OpenAI-style conversations."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import tokenizers

from mlxd.loading.tokenizer import SpecialTokens, Tokenizer
from mlxd_proto.v1 import inference_pb2 as pb
from tests.helpers.daemon_process import FIXTURES

TEMPLATES = FIXTURES / "templates"
NOW = datetime(2025, 6, 1, 12, 0)   # make_expected.py's clock for strftime_now
_TOKENIZER_JSON = FIXTURES / "parity" / "llama" / "tokenizer.json"


def template_source(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def make_tokenizer(chat_template: str | None, *, bos: str | None = "<BOS>", eos: str | None = "<EOS>",
                   folder: Path = _TOKENIZER_JSON) -> Tokenizer:
    return Tokenizer(tokenizers.Tokenizer.from_file(str(folder)), special=SpecialTokens(bos=bos, eos=eos),
                     add_bos=False, extra_eos_ids=[], chat_template=chat_template, clock=lambda: NOW)


def tool_call(call: dict[str, Any]) -> pb.ToolCall:
    function = call["function"]
    return pb.ToolCall(id=call["id"], name=function["name"], arguments=json.dumps(function["arguments"]))


def message(m: dict[str, Any]) -> pb.ChatMessage:
    """An OpenAI-style message as a ChatMessage; `thinking` is mlxd's reasoning_content under another name."""
    if "thinking" in m:
        assert m["thinking"] == m.get("reasoning_content"), "the protocol carries one reasoning text"
    out = pb.ChatMessage(role=m["role"], content=m.get("content", ""), tool_call_id=m.get("tool_call_id", ""),
                         name=m.get("name", ""), tool_calls=[tool_call(c) for c in m.get("tool_calls", [])])
    if "reasoning_content" in m:
        out.reasoning_content = m["reasoning_content"]
    return out


def tool(t: dict[str, Any], form: str = "function") -> pb.Tool:
    """A tool dict as pb.Tool: typed ("function"), its whole JSON ("json") or its function's JSON alone ("bare")."""
    if form == "json":
        return pb.Tool(json=json.dumps(t))
    if form == "bare":
        return pb.Tool(json=json.dumps(t["function"]))
    f = t["function"]
    return pb.Tool(function=pb.Function(name=f["name"], description=f.get("description", ""),
                                        parameters=json.dumps(f["parameters"]) if "parameters" in f else ""))


def chat(conversation: dict[str, Any], tool_form: str = "function", **fields: Any) -> pb.ChatMessages:
    """A conversation as expected.json holds them (messages, tools, add_generation_prompt, chat_template_kwargs) as
    ChatMessages; `fields` sets more ChatMessages fields."""
    out = pb.ChatMessages(messages=[message(m) for m in conversation["messages"]],
                          tools=[tool(t, tool_form) for t in conversation.get("tools") or []],
                          add_generation_prompt=conversation.get("add_generation_prompt", True), **fields)
    out.chat_template_kwargs.update(conversation.get("chat_template_kwargs", {}))
    return out
