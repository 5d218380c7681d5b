"""ChatMessages and MultimodalChat -> what a chat template reads: OpenAI-style message and tool dicts and template
variables.

The dicts have the shapes transformers' apply_chat_template is given by OpenAI-compatible servers, so Hub
templates render them as their authors tested. The JSON the client sends (tool-call arguments, schemas, whole tools)
is parsed and checked here; map_client_text then passes every client string through the special-token guard.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2

from mlxd.errors import InvalidRequest
from mlxd_proto.v1 import inference_pb2 as pb

Text = Callable[[str], str]

# Deeper JSON is refused: converting and guarding it recurses, and no tool schema or call nests near this deep.
MAX_JSON_DEPTH = 100
_EXACT_INTEGERS = 2 ** 53   # doubles hold every integer up to here; beyond, the int would show digits never sent


@dataclass(frozen=True)
class TemplateInputs:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]        # the tools given to the template; [] when none (the template gets None)
    chat_template_kwargs: dict[str, Any]
    add_generation_prompt: bool


def template_inputs(chat: pb.ChatMessages | pb.MultimodalChat, contents: Sequence[Any] | None = None) -> TemplateInputs:
    """The template's inputs as the client sent them, checked; InvalidRequest names the bad field. `contents`: each
    message's content as the template reads it (a multimodal chat's: a string, or a list of text and image items)
    in place of a text chat's strings."""
    tools = [_tool(tool, f"chat.tools[{i}]") for i, tool in enumerate(chat.tools)]
    names = [str(tool["function"]["name"]) for tool in tools]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise InvalidRequest(f"chat.tools[{i}] repeats the function name {name!r}")
    _check_tool_choice(chat.tool_choice, names)
    if chat.tool_choice.WhichOneof("choice") == "mode" and chat.tool_choice.mode == pb.TOOL_CHOICE_NONE:
        # The model is not to call tools, so the template does not tell it about any: prompts that list tools
        # invite calls, and templates have no "tools, but do not call them" mode.
        tools = []
    add_prompt = chat.add_generation_prompt if chat.HasField("add_generation_prompt") else True
    if contents is None:
        assert isinstance(chat, pb.ChatMessages)
        contents = [m.content for m in chat.messages]
    return TemplateInputs([_message(m, i, content) for i, (m, content) in enumerate(zip(chat.messages, contents))],
                          tools, _kwargs(chat.chat_template_kwargs), add_prompt)


def map_client_text(inputs: TemplateInputs, text: Text) -> TemplateInputs:
    """The inputs with every string the client wrote (keys of its JSON included) mapped through text. Message keys
    and the names of template variables stay as they are; in tools every string is mapped, the few this module
    writes ("type", "function", ...) included, which changes nothing as they hold no special-token string."""
    messages = [{key: _map_field(key, value, text) for key, value in message.items()} for message in inputs.messages]
    return TemplateInputs(messages, _deep(inputs.tools, text),
                          {name: _deep(value, text) for name, value in inputs.chat_template_kwargs.items()},
                          inputs.add_generation_prompt)


def client_texts(inputs: TemplateInputs) -> list[str]:
    """Every string of the inputs that map_client_text maps."""
    texts: list[str] = []

    def collect(text: str) -> str:
        texts.append(text)
        return text

    map_client_text(inputs, collect)
    return texts


def _map_field(key: str, value: Any, text: Text) -> Any:
    if key == "tool_calls":
        return [_map_call(call, text) for call in value]
    if isinstance(value, list):  # a multimodal message's items: the text ones are the client's
        return [dict(item, text=text(item["text"])) if item.get("type") == "text" else item for item in value]
    return text(value)


def _map_call(call: dict[str, Any], text: Text) -> dict[str, Any]:
    function = call["function"]
    return {"id": text(call["id"]), "type": call["type"],
            "function": {"name": text(function["name"]), "arguments": _deep(function["arguments"], text)}}


def _check_tool_choice(choice: pb.ToolChoice, names: list[str]) -> None:
    which = choice.WhichOneof("choice")
    if which == "function":
        if choice.function not in names:
            raise InvalidRequest(f"chat.tool_choice.function {choice.function!r} is not one of chat.tools {names}")
    elif which == "mode":
        if choice.mode not in pb.ToolChoiceMode.values():
            raise InvalidRequest(f"chat.tool_choice.mode {choice.mode} is not a known mode")
        if choice.mode == pb.TOOL_CHOICE_REQUIRED and not names:
            raise InvalidRequest("chat.tool_choice.mode is TOOL_CHOICE_REQUIRED but chat.tools is empty")


def _message(message: pb.ChatMessage | pb.MultimodalMessage, index: int, content: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": content}
    if message.tool_calls:
        out["tool_calls"] = [_tool_call(call, f"chat.messages[{index}].tool_calls[{j}]")
                             for j, call in enumerate(message.tool_calls)]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.name:
        out["name"] = message.name
    if message.HasField("reasoning_content"):
        # Templates read an earlier turn's reasoning as `reasoning_content` (Qwen 3) or `thinking` (gpt-oss); both
        # carry it, in the key order transformers gives them.
        reasoning = message.reasoning_content
        out = {"thinking": reasoning, **out, "reasoning_content": reasoning}
    return out


def _tool_call(call: pb.ToolCall, field: str) -> dict[str, Any]:
    if not call.name:
        raise InvalidRequest(f"{field}.name is empty")
    # An empty string is a call without arguments.
    arguments = _json_object(call.arguments, f"{field}.arguments") if call.arguments else {}
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}


def _tool(tool: pb.Tool, field: str) -> dict[str, Any]:
    which = tool.WhichOneof("definition")
    if which == "function":
        function = tool.function
        if not function.name:
            raise InvalidRequest(f"{field}.function.name is empty")
        # An empty schema is a function without arguments; templates iterate `parameters.properties`, so it is
        # spelled out. The description is always there (maybe empty): templates concatenate it unguarded.
        parameters = (_json_object(function.parameters, f"{field}.function.parameters") if function.parameters
                      else {"type": "object", "properties": {}})
        return {"type": "function",
                "function": {"name": function.name, "description": function.description, "parameters": parameters}}
    if which == "json":
        return _json_tool(_json_object(tool.json, f"{field}.json"), f"{field}.json")
    raise InvalidRequest(f"{field} is empty: it needs a function or json")


def _json_tool(value: dict[str, Any], field: str) -> dict[str, Any]:
    """A whole tool ({"type": "function", "function": {...}}) as it is, or a bare function wrapped in one."""
    if "function" not in value and value.get("type") == "function":  # the flat form of OpenAI's Responses API
        value = {key: item for key, item in value.items() if key != "type"}
    if "function" in value:
        if value.get("type", "function") != "function":
            raise InvalidRequest(f"{field} has type {value['type']!r}; only function tools are supported")
        tool, function, where = {"type": "function", **value}, value["function"], f"{field}.function"
    else:
        tool, function, where = {"type": "function", "function": value}, value, field
    if not isinstance(function, dict):
        raise InvalidRequest(f"{where} is not a JSON object")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{where}.name must be a non-empty string, not {name!r}")
    if not isinstance(function.get("parameters", {}), dict):
        raise InvalidRequest(f"{where}.parameters is not a JSON object")
    if not isinstance(function.get("description", ""), str):
        raise InvalidRequest(f"{where}.description is not a string")
    return tool


def _json_object(source: str, field: str) -> dict[str, Any]:
    try:
        value = json.loads(source, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"{field} is not a JSON object: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field} is not a JSON object: it holds a {type(value).__name__}")
    if _depth(value) > MAX_JSON_DEPTH:
        raise InvalidRequest(f"{field} nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    """How deep objects and arrays nest in parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack += [(child, depth + 1) for child in children]
    return deepest


def _no_constant(name: str) -> None:
    # Python's json reads NaN and Infinity, which are not JSON and which templates would print back as such.
    raise ValueError(f"{name} is not JSON")


def _deep(value: Any, text: Text) -> Any:
    """Parsed JSON with every string, keys included, mapped through text."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {text(k): _deep(v, text) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep(v, text) for v in value]
    return value


def _kwargs(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {name: _plain(value, f"chat.chat_template_kwargs.{name}") for name, value in struct.fields.items()}


def _plain(value: struct_pb2.Value, field: str) -> Any:
    """A Struct value as plain Python. Struct numbers are doubles; integral ones become ints, so that a count or a
    level prints as "3", not "3.0", as it would from a JSON request."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidRequest(f"{field} is {number}, not a finite number")
        return int(number) if number.is_integer() and abs(number) <= _EXACT_INTEGERS else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: _plain(v, f"{field}.{k}") for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(v, f"{field}[{i}]") for i, v in enumerate(value.list_value.values)]
    return None  # null_value, or a Value with no kind set
