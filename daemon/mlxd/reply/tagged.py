"""<think>…</think> reasoning and <tool_call>…</tool_call> calls: Qwen3, QwQ, Hermes, and DeepSeek-R1 distills
(reasoning only).

Qwen's templates write `<think>\\n{reasoning}\\n</think>\\n\\n{answer}` and put calls on their own lines,
`{answer}\\n<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`; those newlines belong to the format
and are dropped. Calls are read only outside reasoning.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from mlxd.reply.calls import calls_from_json
from mlxd.reply.scanner import MarkerParser

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"

_OPEN_REASONING = (THINK_OPEN,)
_CLOSE_REASONING = (THINK_CLOSE, "\n" + THINK_CLOSE)
_OPEN_CALL = (CALL_OPEN, "\n" + CALL_OPEN)
_CLOSE_CALL = (CALL_CLOSE,)


class _State(Enum):
    START = "start"  # before anything but whitespace: a reply may still open with <think>
    REASONING = "reasoning"
    TEXT = "text"
    CALL = "call"


def reasoning_start(prompt_text: str) -> str:
    """Where the prompt leaves the reply: "inside" reasoning (QwQ's "<think>\\n"), reasoning "off" (Qwen3 with
    thinking off ends with "</think>\\n\\n") or "open" (the reply may start with <think>)."""
    tail = prompt_text.rstrip()
    if tail.endswith(THINK_OPEN):
        return "inside"
    if tail.endswith(THINK_CLOSE):
        return "off"
    return "open"


class TaggedParser(MarkerParser):
    """`reasoning`: whether <think> blocks are read at all; `tools`: whether <tool_call> blocks are."""

    def __init__(self, prompt_text: str, *, reasoning: bool, tools: bool) -> None:
        super().__init__()
        start = reasoning_start(prompt_text) if reasoning else "off"
        self._state = {"inside": _State.REASONING, "off": _State.TEXT, "open": _State.START}[start]
        self._skip_newlines = start == "inside"
        self._tools = tools
        self._lead = ""  # whitespace seen in START
        self._call_open = ""
        self._call_body = ""

    def _markers(self) -> Sequence[str]:
        if self._state is _State.REASONING:
            return _CLOSE_REASONING
        if self._state is _State.CALL:
            return _CLOSE_CALL
        calls = _OPEN_CALL if self._tools else ()
        return calls + _OPEN_REASONING if self._state is _State.START else calls

    def _on_text(self, text: str) -> str:
        if self._state is _State.START:
            if not text.strip():
                self._lead += text
                return ""
            self._state = _State.TEXT
            lead, self._lead = self._lead, ""
            return lead + text
        if self._state is _State.REASONING:
            self._emit_reasoning(text)
        elif self._state is _State.TEXT:
            self._emit_text(text)
        else:
            self._call_body += text
        return ""

    def _on_marker(self, marker: str) -> None:
        self._lead = ""  # whitespace before a marker that opens the reply is the format's, not the model's text
        if marker == THINK_OPEN:
            self._state = _State.REASONING
            self._skip_newlines = True
        elif marker in _CLOSE_REASONING:
            self._state = _State.TEXT
            self._skip_newlines = True
        elif marker in _OPEN_CALL:
            self._state = _State.CALL
            self._call_open, self._call_body = marker, ""
        else:
            self._close_call(marker)

    def _close_call(self, closing: str) -> None:
        self._emit_calls(calls_from_json(self._call_body), self._call_open + self._call_body + closing)
        self._state = _State.TEXT
        self._skip_newlines = True

    def _on_end(self, stop_text: str) -> None:
        if self._state is _State.START and self._lead:
            self._emit_text(self._lead)
            self._lead = ""
        elif self._state is _State.CALL:
            # No closing tag: a call still counts when its JSON is complete (the model ended the turn early).
            self._close_call("")
