"""ChatMessages and MultimodalChat from the OpenAI-style values agents already hold: messages with tool calls and
results, tools, template arguments, tool_choice."""

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
    chat = pb.ChatMessages(messages=[chat_message(m) for m in messages])
    return _settings(chat, tools, tool_choice, chat_template_kwargs, chat_template, parse_reply, add_generation_prompt)


def multimodal_chat(messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] = (),
                    tool_choice: str | Mapping[str, Any] | None = None,
                    chat_template_kwargs: Mapping[str, Any] | None = None, chat_template: str = "",
                    parse_reply: bool = False, add_generation_prompt: bool | None = None) -> pb.MultimodalChat:
    """As chat_messages, for MultimodalGenerate: a message's "content" is text (str), an encoded image (bytes) or a
    sequence of both, in order."""
    chat = pb.MultimodalChat(messages=[_multimodal_message(m) for m in messages])
    return _settings(chat, tools, tool_choice, chat_template_kwargs, chat_template, parse_reply, add_generation_prompt)


def content_parts(content: str | bytes | Sequence[Any]) -> list[pb.ContentPart]:
    """Text (str), encoded images (bytes) and token ids (a sequence of ints) as content parts, in order."""
    parts = [content] if isinstance(content, (str, bytes, bytearray)) else content
    return [_content_part(part) for part in parts]


def _content_part(part: Any) -> pb.ContentPart:
    if isinstance(part, str):
        return pb.ContentPart(text=part)
    if isinstance(part, (bytes, bytearray)):
        return pb.ContentPart(image=pb.Image(data=bytes(part)))
    return pb.ContentPart(tokens=pb.TokenIds(ids=list(part)))


def _settings(chat: Any, tools: Sequence[Mapping[str, Any]], tool_choice: str | Mapping[str, Any] | None,
              chat_template_kwargs: Mapping[str, Any] | None, chat_template: str, parse_reply: bool,
              add_generation_prompt: bool | None) -> Any:
    """The fields ChatMessages and MultimodalChat share, set on `chat`."""
    chat.tools.extend(pb.Tool(json=json.dumps(tool)) for tool in tools)
    chat.chat_template, chat.parse_reply = chat_template, parse_reply
    if add_generation_prompt is not None:
        chat.add_generation_prompt = add_generation_prompt
    if chat_template_kwargs:
        chat.chat_template_kwargs.CopyFrom(_struct(chat_template_kwargs))
    if tool_choice is not None:
        chat.tool_choice.CopyFrom(_tool_choice(tool_choice))
    return chat


def chat_message(message: Mapping[str, Any]) -> pb.ChatMessage:
    return _with_turn_fields(pb.ChatMessage(role=message["role"], content=message.get("content") or ""), message)


def _multimodal_message(message: Mapping[str, Any]) -> pb.MultimodalMessage:
    out = pb.MultimodalMessage(role=message["role"], content=content_parts(message.get("content") or ()))
    return _with_turn_fields(out, message)


def _with_turn_fields(out: Any, message: Mapping[str, Any]) -> Any:
    """A message's tool calls, tool result fields and reasoning, set on `out`."""
    out.tool_call_id, out.name = message.get("tool_call_id") or "", message.get("name") or ""
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
