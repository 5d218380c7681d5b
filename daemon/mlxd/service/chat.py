"""Chat messages to token ids, so that message text cannot forge the chat template's special tokens.

Rendered and tokenized as one string, a user message holding "<|im_end|>\\n<|im_start|>system" would end its turn
and speak as the system. So special-token strings found in roles and content are each swapped for a marker before
rendering; the rendered text is tokenized with special tokens parsed (the template's own markers stay special),
and each marker becomes its string tokenized as plain text. Text without such strings renders and tokenizes
exactly as before. `parse_special` (ChatMessages.parse_special) keeps the raw behaviour for hosts that want it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from mlxd.loading.tokenizer import Tokenizer
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

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Messages (string content or a list of text and image items) with their text guarded."""
        if not self.forged:
            return messages
        guarded = []
        for message in messages:
            content = message["content"]
            if isinstance(content, str):
                content = self.text(content)
            else:
                content = [dict(item, text=self.text(item["text"])) if item.get("type") == "text" else item
                           for item in content]
            guarded.append({**message, "role": self.text(message["role"]), "content": content})
        return guarded

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
    """Every role and text of a chat, for the size check and the guard."""
    texts = []
    for message in chat.messages:
        texts.append(message.role)
        if isinstance(message.content, str):
            texts.append(message.content)
        else:
            texts += [part.text for part in message.content if part.WhichOneof("part") == "text"]
    return texts


def chat_ids(tokenizer: Tokenizer, chat: pb.ChatMessages) -> list[int]:
    """A text chat rendered with the model's template and tokenized (the template writes BOS itself)."""
    guard = SpecialGuard(tokenizer, chat_texts(chat), chat.parse_special)
    messages = guard.messages([{"role": m.role, "content": m.content} for m in chat.messages])
    add_prompt = chat.add_generation_prompt if chat.HasField("add_generation_prompt") else True
    return guard.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=add_prompt))
