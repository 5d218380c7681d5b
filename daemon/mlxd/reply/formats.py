"""Which reply format a model speaks, chosen from its chat template and its tokenizer, and the parser for it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mlxd.reply import gemma4, harmony, llama3, mistral, tagged
from mlxd.reply.parsed import Parsed, ReplyParser


class PlainParser:
    """Everything is answer text."""

    def __init__(self, prompt_text: str = "", *, tools: bool = False) -> None:
        pass

    def feed(self, delta: str) -> Parsed:
        return Parsed(text=delta)

    def finish(self, stop_text: str = "") -> Parsed:
        return Parsed()


def _tagged(reasoning: bool, tool_calls: bool) -> Callable[[str, bool], ReplyParser]:
    return lambda prompt, tools: tagged.TaggedParser(prompt, reasoning=reasoning, tools=tools and tool_calls)


_PARSERS: dict[str, Callable[[str, bool], ReplyParser]] = {
    "qwen3": _tagged(reasoning=True, tool_calls=True),
    "qwq": _tagged(reasoning=True, tool_calls=True),
    "hermes": _tagged(reasoning=False, tool_calls=True),
    "think": _tagged(reasoning=True, tool_calls=False),
    "mistral": lambda prompt, tools: mistral.MistralParser(prompt, tools=tools),
    "llama3": lambda prompt, tools: llama3.Llama3Parser(prompt, tools=tools),
    "harmony": lambda prompt, tools: harmony.HarmonyParser(prompt, tools=tools),
    "gemma4": lambda prompt, tools: gemma4.Gemma4Parser(prompt, tools=tools),
    "plain": lambda prompt, tools: PlainParser(prompt, tools=tools),
}
FORMAT_NAMES = frozenset(_PARSERS)

# Every marker of each format, and those the tokenizer must hold as special tokens for the format to be chosen
# (markers a format writes as plain text, like Qwen's tags in some tokenizers, are not required).
_MARKERS: dict[str, tuple[str, ...]] = {
    "qwen3": (tagged.THINK_OPEN, tagged.THINK_CLOSE, tagged.CALL_OPEN, tagged.CALL_CLOSE),
    "qwq": (tagged.THINK_OPEN, tagged.THINK_CLOSE, tagged.CALL_OPEN, tagged.CALL_CLOSE),
    "hermes": (tagged.CALL_OPEN, tagged.CALL_CLOSE),
    "think": (tagged.THINK_OPEN, tagged.THINK_CLOSE),
    "mistral": (mistral.TOOL_CALLS, mistral.CALL_ID, mistral.ARGS),
    "llama3": (llama3.PYTHON_TAG, "<|eot_id|>", "<|eom_id|>"),
    "harmony": (harmony.START, harmony.CHANNEL, harmony.CONSTRAIN, harmony.MESSAGE, harmony.END, harmony.CALL,
                harmony.RETURN),
    "gemma4": (gemma4.CHANNEL_OPEN, gemma4.CHANNEL_CLOSE, gemma4.CALL_OPEN, gemma4.CALL_CLOSE, '<|"|>'),
    "plain": (),
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "mistral": (mistral.TOOL_CALLS,),
    "llama3": ("<|eot_id|>",),
    "harmony": (harmony.START, harmony.CHANNEL, harmony.MESSAGE, harmony.END),
}


@dataclass(frozen=True)
class ReplyFormat:
    """A reply format by name (FORMAT_NAMES). `token_ids`: the format's markers that the tokenizer holds as
    single tokens, with their ids (a grammar must name those by id: llguidance treats every added token as
    special, never as text)."""

    name: str
    token_ids: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.name not in _PARSERS:
            raise ValueError(f"unknown reply format {self.name!r}; expected one of {', '.join(sorted(_PARSERS))}")

    def parser(self, prompt_text: str, tools_enabled: bool) -> ReplyParser:
        """A parser for one reply to `prompt_text` (the rendered prompt, whose end says whether the reply starts
        inside reasoning); with tools_enabled False tool-call markers are just text."""
        return _PARSERS[self.name](prompt_text, tools_enabled)

    def token_id(self, marker: str) -> int | None:
        return dict(self.token_ids).get(marker)


def _detect(template: str) -> str:
    """The format a chat template's source teaches, before the tokenizer is asked."""
    if harmony.CHANNEL in template and harmony.MESSAGE in template:
        return "harmony"
    if gemma4.CALL_OPEN in template or gemma4.CHANNEL_OPEN in template:
        return "gemma4"
    if mistral.TOOL_CALLS in template:
        return "mistral"
    if tagged.CALL_OPEN in template:
        if tagged.THINK_OPEN not in template:
            return "hermes"
        # QwQ's generation prompt opens the reasoning itself: '<|im_start|>assistant\n<think>\n'.
        return "qwq" if "assistant\\n<think>" in template else "qwen3"
    if llama3.PYTHON_TAG in template or ("<|eot_id|>" in template and "tools" in template):
        return "llama3"
    if tagged.THINK_OPEN in template or tagged.THINK_CLOSE in template:
        return "think"
    return "plain"


def _required(name: str, template: str) -> tuple[str, ...]:
    if name != "gemma4":
        return _REQUIRED.get(name, ())
    # Gemma 4 needs the pair of markers for each feature its template uses.
    pairs = ((gemma4.CHANNEL_OPEN, gemma4.CHANNEL_CLOSE), (gemma4.CALL_OPEN, gemma4.CALL_CLOSE))
    return tuple(marker for pair in pairs if pair[0] in template for marker in pair)


def reply_format(template: str, special_tokens: Mapping[str, int]) -> ReplyFormat:
    """The format of replies from a model with this chat template source and these tokens (content -> id; pass
    every added token, special or not: Qwen's <think> and <tool_call> are added tokens marked not special).
    "plain" when the template teaches no format known here or the tokenizer lacks a marker the format needs."""
    name = _detect(template)
    if any(marker not in special_tokens for marker in _required(name, template)):
        name = "plain"
    ids = tuple((marker, special_tokens[marker]) for marker in _MARKERS[name] if marker in special_tokens)
    return ReplyFormat(name, ids)
