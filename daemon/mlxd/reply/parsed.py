"""What a reply parser hands back: the part of a model's reply that became final, split into answer text,
reasoning and tool calls, and the one protocol every format's parser follows."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from typing import Protocol

_ALPHANUMERICS = string.ascii_letters + string.digits
# Mistral's template refuses a call id sent back unless it is exactly this long.
CALL_ID_CHARS = 9


@dataclass(frozen=True)
class ParsedToolCall:
    """One complete tool call. `id` is the format's own (Mistral's [CALL_ID]) or a generated one; `arguments` is
    the JSON text of an object, normalised with json.dumps(obj, ensure_ascii=False)."""

    id: str
    name: str
    arguments: str


@dataclass
class Parsed:
    """What became final with one delta (or at the end): answer text, reasoning text, complete tool calls."""

    text: str = ""
    reasoning: str = ""
    tool_calls: list[ParsedToolCall] = field(default_factory=list)


class ReplyParser(Protocol):
    """Reads one reply as it streams. feed() takes the decoded text in deltas of any size (special tokens
    included as their strings, the token that ended the reply excluded); finish() ends the reply."""

    def feed(self, delta: str) -> Parsed:
        """What became final with this delta."""
        ...

    def finish(self, stop_text: str = "") -> Parsed:
        """The rest, at the end of the reply; stop_text is the text of the token that ended it ("<|call|>",
        "<|im_end|>"), "" when max_tokens cut it."""
        ...


def random_alphanumerics(count: int) -> str:
    return "".join(secrets.choice(_ALPHANUMERICS) for _ in range(count))


def new_call_id() -> str:
    """An id for a call whose format carries none: "call_" and nine random alphanumerics."""
    return "call_" + random_alphanumerics(CALL_ID_CHARS)
