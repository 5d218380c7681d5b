"""Gemma 4's call syntax to JSON: `call:NAME{key:<|"|>text<|"|>,n:1,flag:true,list:[1,2],obj:{k:<|"|>v<|"|>}}`.

Keys are bare (or quoted), strings sit between <|"|> tokens with nothing escaped, other scalars are written as
JSON would (the template prints None as "None"). JSON's own quoted strings are taken too.
"""

from __future__ import annotations

import json
import re
from typing import Any

QUOTE = '<|"|>'
_CALL_HEAD = re.compile(r"\s*call:([^\s{]+)\s*(?=\{)")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_WORDS = {"true": True, "false": False, "null": None, "None": None}
# Deeper nesting is no call a model means; the bound keeps the recursion far from Python's limit.
MAX_DEPTH = 64


class _Malformed(Exception):
    pass


def parse_gemma_call(body: str) -> tuple[str, dict[str, Any]] | None:
    """(name, arguments) of the text between <|tool_call> and <tool_call|>; None when it is malformed."""
    head = _CALL_HEAD.match(body)
    if head is None:
        return None
    reader = _Reader(body, head.end())
    try:
        arguments = reader.value(0)
        reader.skip_space()
    except _Malformed:
        return None
    if reader.position != len(body) or not isinstance(arguments, dict):
        return None
    return head.group(1), arguments


class _Reader:
    def __init__(self, text: str, position: int) -> None:
        self.text = text
        self.position = position

    def skip_space(self) -> None:
        while self.position < len(self.text) and self.text[self.position].isspace():
            self.position += 1

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _Malformed
        self.skip_space()
        if self.text.startswith(QUOTE, self.position):
            return self.quoted()
        char = self.text[self.position:self.position + 1]
        if char == "{":
            return self.mapping(depth)
        if char == "[":
            return self.sequence(depth)
        if char == '"':
            return self.json_string()
        return self.scalar()

    def quoted(self) -> str:
        start = self.position + len(QUOTE)
        end = self.text.find(QUOTE, start)
        if end < 0:
            raise _Malformed
        self.position = end + len(QUOTE)
        return self.text[start:end]

    def json_string(self) -> str:
        try:
            value, self.position = json.JSONDecoder().raw_decode(self.text, self.position)
        except ValueError:
            raise _Malformed from None
        return str(value)

    def scalar(self) -> Any:
        end = self.position
        while end < len(self.text) and self.text[end] not in ",}]":
            end += 1
        word = self.text[self.position:end].strip()
        self.position = end
        if word in _WORDS:
            return _WORDS[word]
        if _NUMBER.fullmatch(word):
            return json.loads(word)
        raise _Malformed

    def key(self) -> str:
        self.skip_space()
        if self.text.startswith(QUOTE, self.position):
            return self.quoted()
        if self.text.startswith('"', self.position):
            return self.json_string()
        end = self.text.find(":", self.position)
        if end < 0:
            raise _Malformed
        word = self.text[self.position:end].strip()
        if not word or any(c in word for c in "{}[],"):
            raise _Malformed
        self.position = end
        return word

    def expect(self, char: str) -> None:
        self.skip_space()
        if not self.text.startswith(char, self.position):
            raise _Malformed
        self.position += len(char)

    def mapping(self, depth: int) -> dict[str, Any]:
        self.expect("{")
        result: dict[str, Any] = {}
        self.skip_space()
        if self.text.startswith("}", self.position):
            self.position += 1
            return result
        while True:
            key = self.key()
            self.expect(":")
            result[key] = self.value(depth + 1)
            self.skip_space()
            if self.text.startswith("}", self.position):
                self.position += 1
                return result
            self.expect(",")

    def sequence(self, depth: int) -> list[Any]:
        self.expect("[")
        result: list[Any] = []
        self.skip_space()
        if self.text.startswith("]", self.position):
            self.position += 1
            return result
        while True:
            result.append(self.value(depth + 1))
            self.skip_space()
            if self.text.startswith("]", self.position):
                self.position += 1
                return result
            self.expect(",")
