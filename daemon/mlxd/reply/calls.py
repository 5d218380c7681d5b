"""Tool calls out of the JSON a model wrote: {"name": ..., "arguments": {...}} objects (Qwen, Hermes, Llama's
"parameters", Mistral's JSON list), and the normal form of their arguments."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mlxd.reply.parsed import ParsedToolCall, new_call_id

NOT_JSON = object()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(text: str) -> Any:
    """The value of `text`, or NOT_JSON when it is not one JSON value (NaN and Infinity are refused: json.dumps
    would write them back as text no JSON parser takes)."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return NOT_JSON


def arguments_text(value: Any) -> str | None:
    """The normal JSON text of a call's arguments: an object, or a string holding one (templates that pass
    arguments through tojson teach models to double-encode them); None for anything else."""
    if isinstance(value, str):
        value = load_json(value)
    if not isinstance(value, dict):
        return None
    return json.dumps(value, ensure_ascii=False)


def call_from_object(obj: Any, new_id: Callable[[], str] = new_call_id, *,
                     arguments_required: bool = False) -> ParsedToolCall | None:
    """The call an object describes: a non-empty string "name" and arguments under "arguments" or "parameters"
    (absent means none, unless arguments_required). A string "id" is kept. None when it is no call."""
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    key = "arguments" if "arguments" in obj else "parameters"
    if key not in obj and arguments_required:
        return None
    arguments = arguments_text(obj.get(key, {}))
    if arguments is None:
        return None
    given_id = obj.get("id")
    call_id = given_id if isinstance(given_id, str) and given_id.strip() else new_id()
    return ParsedToolCall(id=call_id, name=name.strip(), arguments=arguments)


def calls_from_json(text: str, new_id: Callable[[], str] = new_call_id, *,
                    arguments_required: bool = False) -> list[ParsedToolCall] | None:
    """The calls in `text`: one call object or a non-empty list of them; None unless every item is a call."""
    value = load_json(text)
    items = value if isinstance(value, list) else [value]
    calls = [call_from_object(item, new_id, arguments_required=arguments_required) for item in items]
    if not calls or any(call is None for call in calls):
        return None
    return [call for call in calls if call is not None]


def calls_from_json_sequence(text: str, new_id: Callable[[], str] = new_call_id, *,
                             arguments_required: bool = False) -> list[ParsedToolCall] | None:
    """Like calls_from_json, but also takes several objects one after another, separated by whitespace or ";"
    (Llama 3.2 writes parallel calls so)."""
    single = calls_from_json(text, new_id, arguments_required=arguments_required)
    if single is not None:
        return single
    decoder = json.JSONDecoder(parse_constant=_refuse_constant)
    calls: list[ParsedToolCall] = []
    position = 0
    while True:
        while position < len(text) and (text[position].isspace() or (calls and text[position] == ";")):
            position += 1
        if position == len(text):
            return calls or None
        try:
            value, position = decoder.raw_decode(text, position)
        except (ValueError, RecursionError):
            return None
        call = call_from_object(value, new_id, arguments_required=arguments_required)
        if call is None:
            return None
        calls.append(call)
