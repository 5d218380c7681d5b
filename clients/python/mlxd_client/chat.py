"""ChatMessages from the OpenAI-style values agents already hold: messages with tool calls and results, tools,
template arguments, tool_choice."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import struct_pb2

from mlxd_proto.v1 import inference_pb2 as pb

_MODES = {"auto": pb.TOOL_CHOICE_AUTO, "none": pb.TOOL_CHOICE_NONE, "required": pb.TOOL_CHOICE_REQUIRED}


def chat_messages(messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] = (),
                  tool_choice: str | Mapping[str, Any] | None = None,
                  chat_template_kwargs: Mapping[str, Any] | None = None, chat_template: str = "",
                  parse_reply: bool = False, add_generation_prompt: bool | None = None) -> pb.ChatMessages:
    """messages: {"role", "content", "tool_calls": [{"id", "function": {"name", "arguments"}}], "tool_call_id",
    "name", "reasoning_content"} (arguments a dict or JSON text); tools: {"type": "function", "function": {...}};
    tool_choice: "auto", "none", "required", a function's name or {"function": {"name": ...}}."""
    chat = pb.ChatMessages(messages=[chat_message(m) for m in messages], chat_template=chat_template,
                           parse_reply=parse_reply, tools=[pb.Tool(json=json.dumps(tool)) for tool in tools])
    if add_generation_prompt is not None:
        chat.add_generation_prompt = add_generation_prompt
    if chat_template_kwargs:
        chat.chat_template_kwargs.CopyFrom(_struct(chat_template_kwargs))
    if tool_choice is not None:
        chat.tool_choice.CopyFrom(_tool_choice(tool_choice))
    return chat


def chat_message(message: Mapping[str, Any]) -> pb.ChatMessage:
    out = pb.ChatMessage(role=message["role"], content=message.get("content") or "",
                         tool_call_id=message.get("tool_call_id") or "", name=message.get("name") or "")
    for call in message.get("tool_calls") or ():
        function = call.get("function", call)
        arguments = function.get("arguments", {})
        out.tool_calls.append(pb.ToolCall(id=call.get("id", ""), name=function["name"],
                                          arguments=arguments if isinstance(arguments, str) else json.dumps(arguments)))
    if message.get("reasoning_content") is not None:
        out.reasoning_content = message["reasoning_content"]
    return out


def _tool_choice(choice: str | Mapping[str, Any]) -> pb.ToolChoice:
    if isinstance(choice, Mapping):
        return pb.ToolChoice(function=choice.get("function", choice)["name"])
    if choice in _MODES:
        return pb.ToolChoice(mode=_MODES[choice])
    return pb.ToolChoice(function=choice)


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(dict(values))
    return struct
