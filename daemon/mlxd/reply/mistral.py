"""Mistral's calls: `[TOOL_CALLS]name[CALL_ID]id[ARGS]{json}` per call ([CALL_ID] optional), or the older
`[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` list. A call ends at the next [TOOL_CALLS] or at the end
of the reply (the model ends its turn after its calls)."""

from __future__ import annotations

from collections.abc import Sequence

from mlxd.reply.calls import arguments_text, calls_from_json, load_json
from mlxd.reply.parsed import CALL_ID_CHARS, ParsedToolCall, random_alphanumerics
from mlxd.reply.scanner import MarkerParser

TOOL_CALLS = "[TOOL_CALLS]"
CALL_ID = "[CALL_ID]"
ARGS = "[ARGS]"


def mistral_call_id() -> str:
    """Nine alphanumerics: the only id Mistral's templates take back in the next request."""
    return random_alphanumerics(CALL_ID_CHARS)


class MistralParser(MarkerParser):
    def __init__(self, prompt_text: str, *, tools: bool) -> None:
        super().__init__()
        self._tools = tools
        self._in_call = False
        self._part = ""  # the part being read: "name", "id" or "args"
        self._fields = {"name": "", "id": "", "args": ""}
        self._raw = ""

    def _markers(self) -> Sequence[str]:
        if not self._tools:
            return ()
        if not self._in_call or self._part == "args":
            return (TOOL_CALLS,)
        if self._part == "id":
            return (TOOL_CALLS, ARGS)
        return (TOOL_CALLS, CALL_ID, ARGS)

    def _on_text(self, text: str) -> str:
        if self._in_call:
            self._fields[self._part] += text
            self._raw += text
        else:
            self._emit_text(text)
        return ""

    def _on_marker(self, marker: str) -> None:
        if marker == TOOL_CALLS:
            self._close_call()
            self._in_call, self._part = True, "name"
            self._fields = {"name": "", "id": "", "args": ""}
        else:
            self._part = "id" if marker == CALL_ID else "args"
        self._raw += marker

    def _on_end(self, stop_text: str) -> None:
        self._close_call()

    def _close_call(self) -> None:
        if not self._in_call:
            return
        self._emit_calls(self._calls(), self._raw)
        self._in_call, self._raw = False, ""

    def _calls(self) -> list[ParsedToolCall] | None:
        if self._part == "name":  # no [ARGS]: the JSON list form
            return calls_from_json(self._fields["name"], mistral_call_id)
        name = self._fields["name"].strip()
        arguments = arguments_text(load_json(self._fields["args"]))
        if not name or arguments is None:
            return None
        return [ParsedToolCall(id=self._fields["id"].strip() or mistral_call_id(), name=name, arguments=arguments)]
