"""Llama 3.x calls: a reply that is bare JSON `{"name": ..., "parameters": {...}}` ("arguments" too, and several
objects separated by ";" as Llama 3.2 writes them), or `<|python_tag|>` followed by such JSON or by a built-in
call `brave_search.call(query="...")`. Both end with the turn, so calls are read at the end."""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from enum import Enum

from mlxd.reply.calls import calls_from_json_sequence
from mlxd.reply.parsed import ParsedToolCall, new_call_id
from mlxd.reply.scanner import MarkerParser

PYTHON_TAG = "<|python_tag|>"


class _State(Enum):
    START = "start"  # only whitespace so far: the reply may still be a bare JSON call
    TEXT = "text"
    JSON = "json"
    PYTHON = "python"


def builtin_call(text: str) -> ParsedToolCall | None:
    """`name.call(key=literal, ...)` as a call of `name` with those arguments; None for anything else."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "call"
            and isinstance(call.func.value, ast.Name) and not call.args):
        return None
    arguments = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            return None
        try:
            arguments[keyword.arg] = ast.literal_eval(keyword.value)
            text_form = json.dumps(arguments[keyword.arg], ensure_ascii=False, allow_nan=False)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            return None
        arguments[keyword.arg] = json.loads(text_form)  # tuples become lists, as JSON has them
    return ParsedToolCall(id=new_call_id(), name=call.func.value.id,
                          arguments=json.dumps(arguments, ensure_ascii=False))


class Llama3Parser(MarkerParser):
    def __init__(self, prompt_text: str, *, tools: bool) -> None:
        super().__init__()
        self._state = _State.START if tools else _State.TEXT
        self._tools = tools
        self._lead = ""
        self._body = ""

    def _markers(self) -> Sequence[str]:
        return (PYTHON_TAG,) if self._state in (_State.START, _State.TEXT) and self._tools else ()

    def _on_text(self, text: str) -> str:
        if self._state is _State.START:
            stripped = text.lstrip()
            if not stripped:
                self._lead += text
                return ""
            self._state = _State.JSON if stripped.startswith("{") else _State.TEXT
            lead, self._lead = self._lead, ""
            return lead + text
        if self._state is _State.TEXT:
            self._emit_text(text)
        else:
            self._body += text
        return ""

    def _on_marker(self, marker: str) -> None:
        self._lead = ""  # whitespace before a call that opens the reply is no answer
        self._state = _State.PYTHON

    def _on_end(self, stop_text: str) -> None:
        if self._state is _State.START:
            self._emit_text(self._lead)
        elif self._state is _State.JSON:
            self._emit_calls(calls_from_json_sequence(self._body, arguments_required=True), self._body)
        elif self._state is _State.PYTHON:
            calls = calls_from_json_sequence(self._body, arguments_required=True)
            if calls is None:
                builtin = builtin_call(self._body)
                calls = [builtin] if builtin else None
            self._emit_calls(calls, PYTHON_TAG + self._body)
