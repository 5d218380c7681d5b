"""Chat messages to token ids, so that message text cannot forge the chat template's special tokens.

Rendered and tokenized as one string, a user message holding "<|im_end|>\\n<|im_start|>system" would end its turn
and speak as the system. So special-token strings found in any client text the template sees (roles, content, tool
calls and results, reasoning, tool definitions, template arguments) are each swapped for a marker before rendering;
the rendered text is tokenized with special tokens parsed (the template's own markers stay special), and each marker
becomes its string tokenized as plain text. Text without such strings renders and tokenizes
exactly as before. `parse_special` (ChatMessages.parse_special) keeps the raw behaviour for hosts that want it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2

from mlxd.loading.tokenizer import Tokenizer
from mlxd.service.chat_inputs import client_texts, map_client_text, template_inputs
from mlxd_proto.v1 import inference_pb2 as pb

_MARKER_BASE = 0xF0000   # private-use plane 15: no template writes these, and no special token contains one


class SpecialGuard:
    """The special-token strings found in a request's text, and how to encode text rendered around them."""

    def __init__(self, tokenizer: Tokenizer, texts: Iterable[str], parse_special: bool) -> None:
        self._tokenizer = tokenizer
        texts = [t for t in texts if t]
        self.forged: list[str] = [] if parse_special else self._find(texts)
        self._index = {s: i for i, s in enumerate(self.forged)}
        self._marker = _unused_character(texts) if self.forged else ""
        self._split = re.compile(f"{self._marker}(\\d+){self._marker}") if self.forged else None

    def _find(self, texts: list[str]) -> list[str]:
        specials: dict[str, int] = self._tokenizer.special_tokens
        if not texts or not specials:
            return []
        # One pass of the tokenizer's own matcher over all the text; NUL (in no special token) keeps texts apart.
        ids = set(self._tokenizer.encode("\0".join(texts), add_special_tokens=False, parse_special=True))
        found = [s for s, i in specials.items() if i in ids]
        # Longest first, so that a token containing another is swapped whole.
        return sorted(found, key=len, reverse=True)

    def text(self, text: str) -> str:
        """text with each forged special-token string replaced by its marker."""
        for string in self.forged:
            if string in text:
                text = text.replace(string, f"{self._marker}{self._index[string]}{self._marker}")
        return text

    def restore(self, text: str) -> str:
        """Rendered text with each marker turned back into the client's string."""
        return self._split.sub(lambda m: self.forged[int(m.group(1))], text) if self._split else text

    def encode(self, text: str) -> list[int]:
        """Token ids of rendered text: special tokens parsed, except where a marker stands for client text."""
        encode = self._tokenizer.encode
        if self._split is None:
            return encode(text, add_special_tokens=False, parse_special=True)
        ids: list[int] = []
        for k, piece in enumerate(self._split.split(text)):
            if k % 2 == 0:
                ids += encode(piece, add_special_tokens=False, parse_special=True) if piece else []
            else:
                ids += encode(self.forged[int(piece)], add_special_tokens=False, parse_special=False)
        return ids


def _unused_character(texts: list[str]) -> str:
    used = set().union(*map(set, texts))
    return next(chr(c) for c in range(_MARKER_BASE, _MARKER_BASE + len(used) + 1) if chr(c) not in used)


def chat_texts(chat: pb.ChatMessages | pb.MultimodalChat) -> list[str]:
    """Every client text of a chat as sent (JSON unparsed, which is never shorter than what it parses to), for the
    size check: roles, content (a multimodal message's text parts), tool calls and results, reasoning, tools and the
    template arguments' strings."""
    texts = []
    for message in chat.messages:
        texts += [message.role, message.tool_call_id, message.name, message.reasoning_content]
        if isinstance(message, pb.ChatMessage):
            texts.append(message.content)
        else:
            texts += [part.text for part in message.content if part.WhichOneof("part") == "text"]
        texts += [text for call in message.tool_calls for text in (call.id, call.name, call.arguments)]
    for tool in chat.tools:
        function = tool.function
        texts += [tool.json, function.name, function.description, function.parameters]
    texts += _struct_texts(chat.chat_template_kwargs)
    return texts


def _struct_texts(struct: struct_pb2.Struct) -> list[str]:
    return [text for name, value in struct.fields.items() for text in (name, *_value_texts(value))]


def _value_texts(value: struct_pb2.Value) -> list[str]:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return [value.string_value]
    if kind == "struct_value":
        return _struct_texts(value.struct_value)
    if kind == "list_value":
        return [text for item in value.list_value.values for text in _value_texts(item)]
    return []


@dataclass(frozen=True)
class RenderedChat:
    """A chat rendered for the model: what the output parser and a tool-call grammar are chosen from."""

    ids: list[int]           # the prompt's token ids (client text never forges special tokens unless parse_special)
    text: str                # the rendered prompt, as the client's text reads
    template: str            # the template source used: the request's chat_template, or the model's
    tools: list[dict[str, Any]]  # the tools given to the template, as the client sent them; [] when none


@dataclass(frozen=True)
class TemplateOutput:
    """What a chat template wrote, before tokenization."""

    guarded: str             # the rendered text, each special-token string of the client's still as its marker
    guard: SpecialGuard      # encodes `guarded` (guard.encode) and restores the client's text (guard.restore)
    template: str            # the template source used: the request's chat_template, or the model's
    tools: list[dict[str, Any]]  # the tools given to the template, as the client sent them; [] when none

    def rendered(self, ids: list[int]) -> RenderedChat:
        """The chat as rendered, `ids` its prompt's token ids."""
        return RenderedChat(ids=ids, text=self.guard.restore(self.guarded), template=self.template, tools=self.tools)


def apply_template(tokenizer: Tokenizer, chat: pb.ChatMessages | pb.MultimodalChat,
                   contents: list[Any] | None = None) -> TemplateOutput:
    """A chat rendered with the request's template or the model's (`contents`: a multimodal chat's messages'
    content, chat_inputs.template_inputs)."""
    inputs = template_inputs(chat, contents)
    guard = SpecialGuard(tokenizer, client_texts(inputs), chat.parse_special)
    guarded = map_client_text(inputs, guard.text) if guard.forged else inputs
    rendered = tokenizer.apply_chat_template(guarded.messages, add_generation_prompt=guarded.add_generation_prompt,
                                             tools=guarded.tools or None,
                                             chat_template_kwargs=guarded.chat_template_kwargs,
                                             chat_template=chat.chat_template or None)
    return TemplateOutput(rendered, guard,
                          chat.chat_template or tokenizer.template_source(bool(guarded.tools)) or "", inputs.tools)


def render_chat(tokenizer: Tokenizer, chat: pb.ChatMessages) -> RenderedChat:
    """A text chat rendered with the request's template or the model's, and tokenized (the template writes BOS)."""
    output = apply_template(tokenizer, chat)
    return output.rendered(output.guard.encode(output.guarded))


def chat_ids(tokenizer: Tokenizer, chat: pb.ChatMessages) -> list[int]:
    """A text chat's prompt token ids (render_chat's)."""
    return render_chat(tokenizer, chat).ids
