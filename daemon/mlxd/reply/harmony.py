"""gpt-oss's harmony format. The reply starts after the prompt's "<|start|>assistant" and is a run of messages,
each a header then `<|message|>` and a body ended by <|end|>, <|call|> or <|return|>:

    <|channel|>analysis<|message|>…<|end|>                                  reasoning
    <|start|>assistant<|channel|>final<|message|>…<|return|>                 answer text
    <|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{…}<|call|>    a call of NAME
    <|start|>assistant to=functions.NAME<|channel|>commentary json<|message|>{…}<|call|>  the same call

Headers are never text. A commentary message to no one is a preamble meant for the user: text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mlxd.reply.calls import arguments_text, load_json
from mlxd.reply.parsed import ParsedToolCall, new_call_id
from mlxd.reply.scanner import MarkerParser

START = "<|start|>"
CHANNEL = "<|channel|>"
CONSTRAIN = "<|constrain|>"
MESSAGE = "<|message|>"
END = "<|end|>"
CALL = "<|call|>"
RETURN = "<|return|>"
FUNCTIONS = "functions."

_BODY_ENDS = (END, CALL, RETURN)
# A message that never ended: the next header starting ends it.
_BODY_MARKERS = (*_BODY_ENDS, START, CHANNEL)
_HEADER_MARKERS = (MESSAGE,)
_CHANNEL_NAME = re.compile(r"<\|channel\|>\s*([^\s<]+)")
_RECIPIENT = re.compile(r"to=([^\s<]+)")
# What an unfinished header may hold at the end of a reply and still be dropped as only a header.
_HEADER_PREFIX = re.compile(r"\s*(<\|start\|>\s*(assistant)?)?\s*(to=[^\s<]*\s*)?"
                            r"(<\|channel\|>[^\s<]*\s*(to=[^\s<]*\s*)?(<\|constrain\|>)?[^\s<]*)?\s*")


@dataclass(frozen=True)
class Header:
    channel: str
    recipient: str


def parse_header(header: str) -> Header:
    channel = _CHANNEL_NAME.search(header)
    recipient = _RECIPIENT.search(header)
    return Header(channel.group(1) if channel else "", recipient.group(1) if recipient else "")


class HarmonyParser(MarkerParser):
    def __init__(self, prompt_text: str, *, tools: bool) -> None:
        super().__init__()
        self._tools = tools
        self._header = ""
        self._in_body = False
        self._destination = "text"  # for the body: "text", "reasoning" or "call"
        self._body = ""

    def _markers(self) -> Sequence[str]:
        return _BODY_MARKERS if self._in_body else _HEADER_MARKERS

    def _on_text(self, text: str) -> str:
        if not self._in_body:
            self._header += text
        elif self._destination == "reasoning":
            self._emit_reasoning(text)
        elif self._destination == "text":
            self._emit_text(text)
        else:
            self._body += text
        return ""

    def _on_marker(self, marker: str) -> None:
        if not self._in_body:  # <|message|>
            self._open_body()
            return
        self._close_body(marker if marker in _BODY_ENDS else "")
        # A header that starts without the previous message ending keeps its first marker.
        self._header = "" if marker in _BODY_ENDS else marker

    def _open_body(self) -> None:
        header = parse_header(self._header)
        self._in_body, self._body = True, ""
        if header.recipient.startswith(FUNCTIONS) and self._tools:
            self._destination = "call"
        elif header.channel == "analysis":
            self._destination = "reasoning"
        else:
            self._destination = "text"

    def _close_body(self, ending: str) -> None:
        if self._destination == "call":
            name = parse_header(self._header).recipient.removeprefix(FUNCTIONS)
            arguments = arguments_text(load_json(self._body))
            if name and arguments is not None:
                self._emit_call(ParsedToolCall(id=new_call_id(), name=name, arguments=arguments))
            else:
                self._emit_text(self._header + MESSAGE + self._body + ending)
        self._in_body, self._body, self._destination = False, "", "text"

    def _on_end(self, stop_text: str) -> None:
        if self._in_body:
            # The token that ended the reply (<|call|>, <|return|>) ends its last message; a call cut by
            # max_tokens still counts when its JSON is complete.
            self._close_body(stop_text if stop_text in _BODY_ENDS else "")
        elif self._header and not _HEADER_PREFIX.fullmatch(self._header):
            self._emit_text(self._header)  # no header at all: a model that wrote plain text
        self._header = ""
