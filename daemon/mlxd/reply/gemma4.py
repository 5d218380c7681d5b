"""Gemma 4: reasoning in the thought channel `<|channel>thought\\n…<channel|>`, calls as
`<|tool_call>call:NAME{key:<|"|>text<|"|>,n:1}<tool_call|>` (gemma_args.py turns their syntax into JSON)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import Enum

from mlxd.reply.gemma_args import parse_gemma_call
from mlxd.reply.parsed import ParsedToolCall, new_call_id
from mlxd.reply.scanner import MarkerParser

CHANNEL_OPEN = "<|channel>"
CHANNEL_CLOSE = "<channel|>"
CALL_OPEN = "<|tool_call>"
CALL_CLOSE = "<tool_call|>"
# The channel's name and its newline are the format's, not reasoning.
_OPEN_THOUGHT = (CHANNEL_OPEN, CHANNEL_OPEN + "thought", CHANNEL_OPEN + "thought\n")


class _State(Enum):
    TEXT = "text"
    THOUGHT = "thought"
    CALL = "call"


def starts_in_thought(prompt_text: str) -> bool:
    """Whether the prompt ends inside an open thought channel (an empty one, "…<channel|>", is closed)."""
    return prompt_text.rfind(CHANNEL_OPEN) > prompt_text.rfind(CHANNEL_CLOSE)


class Gemma4Parser(MarkerParser):
    def __init__(self, prompt_text: str, *, tools: bool) -> None:
        super().__init__()
        self._state = _State.THOUGHT if starts_in_thought(prompt_text) else _State.TEXT
        self._tools = tools
        self._body = ""

    def _markers(self) -> Sequence[str]:
        if self._state is _State.THOUGHT:
            return (CHANNEL_CLOSE,)
        if self._state is _State.CALL:
            return (CALL_CLOSE,)
        return (*_OPEN_THOUGHT, CALL_OPEN) if self._tools else _OPEN_THOUGHT

    def _on_text(self, text: str) -> str:
        if self._state is _State.THOUGHT:
            self._emit_reasoning(text)
        elif self._state is _State.CALL:
            self._body += text
        else:
            self._emit_text(text)
        return ""

    def _on_marker(self, marker: str) -> None:
        if marker in _OPEN_THOUGHT:
            self._state = _State.THOUGHT
        elif marker == CALL_OPEN:
            self._state, self._body = _State.CALL, ""
        elif marker == CHANNEL_CLOSE:
            self._state = _State.TEXT
        else:
            self._close_call(CALL_CLOSE)

    def _close_call(self, closing: str) -> None:
        parsed = parse_gemma_call(self._body)
        if parsed is None:
            self._emit_text(CALL_OPEN + self._body + closing)
        else:
            name, arguments = parsed
            self._emit_call(ParsedToolCall(id=new_call_id(), name=name,
                                           arguments=json.dumps(arguments, ensure_ascii=False)))
        self._state, self._body = _State.TEXT, ""

    def _on_end(self, stop_text: str) -> None:
        if self._state is _State.CALL:
            self._close_call("")
