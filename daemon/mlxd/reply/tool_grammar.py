"""Grammars that force a reply to be tool calls (tool_choice "required", or one named function) in the model's
own format, each call's arguments valid under its function's JSON Schema.

The grammars are Lark in llguidance's dialect (ConstraintSpec kind "lark"). Markers the tokenizer holds as tokens
are written by id, so the model emits them as it was trained to. Where the model may reason first, the reasoning
is left free: through the `after` marker (ConstraintSpec.after) when the marker is text, inside the grammar when
it is a token (a text marker cannot match a token).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlxd.constraints.errors import ConstraintError
from mlxd.reply import gemma4, harmony, mistral, tagged
from mlxd.reply.formats import ReplyFormat
from mlxd.reply.gemma_args import QUOTE
from mlxd.reply.gemma_grammar import GemmaArguments
from mlxd.reply.grammar_parts import (
    Function,
    arguments_schema,
    call_object_schema,
    json_rule,
    literal,
    marker,
    offered_functions,
)

# Free text up to a marker token: a regex cannot hold a token, so it ends where the token comes.
_FREE = "FREE: /(.|\\n)*/"
# What reasoning models put between their reasoning and the answer (free_prefix.py allows as much).
_GAP = "GAP: /[ \\t\\r\\n]{0,16}/"


@dataclass(frozen=True)
class _Request:
    fmt: ReplyFormat
    functions: list[Function]
    several: bool  # one or more calls; False: exactly one
    prompt_text: str

    def mark(self, text: str) -> str:
        return marker(self.fmt, text)

    def repeated(self, call: str, separator: str = "") -> str:
        joined = f"{separator} {call}".strip()
        return f"{call} ({joined})*" if self.several else call


def tool_call_grammar(fmt: ReplyFormat, tools: list[dict[str, Any]], function: str | None,
                      prompt_text: str) -> tuple[str, str]:
    """(a Lark grammar in llguidance's dialect, an `after` marker or "") that makes the reply one or more calls
    (exactly one call of `function` when given) in fmt's format, each call's arguments valid under the function's
    JSON Schema. The after marker lets a reasoning model think first ("</think>" for qwen3/qwq when the prompt
    leaves thinking on). ConstraintError ("invalid") for a format without tool calls, bad tools, or (gemma4) a
    schema keyword its grammar cannot enforce."""
    build = _BUILDERS.get(fmt.name)
    if build is None:
        raise ConstraintError("invalid", f"the {fmt.name!r} reply format has no tool-call syntax to force")
    request = _Request(fmt, offered_functions(tools, function), function is None, prompt_text)
    return build(request)


def _tagged(request: _Request) -> tuple[str, str]:
    """Qwen3, QwQ, Hermes: <tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>, one per line."""
    functions = [f"f{i}: {json_rule(call_object_schema(f, 'arguments'))}" for i, f in enumerate(request.functions)]
    call = (f'call: {request.mark(tagged.CALL_OPEN)} "\\n" ({" | ".join(_names(request))}) "\\n" '
            f"{request.mark(tagged.CALL_CLOSE)}")
    start = request.repeated("call", '"\\n"')
    after = ""
    where = tagged.reasoning_start(request.prompt_text) if request.fmt.name != "hermes" else "off"
    extra: list[str] = []
    if where != "off":
        close = request.fmt.token_id(tagged.THINK_CLOSE)
        if close is None:
            after = tagged.THINK_CLOSE
        else:
            opening = f"{request.mark(tagged.THINK_OPEN)}? " if where == "open" else ""
            start = f"{opening}FREE <[{close}]> GAP {start}"
            extra = [_FREE, _GAP]
    return _lines(f"start: {start}", call, *functions, *extra), after


def _mistral(request: _Request) -> tuple[str, str]:
    """[TOOL_CALLS]name[CALL_ID]id[ARGS]{json} per call; tokenizers without [ARGS] take the JSON list form."""
    calls = request.mark(mistral.TOOL_CALLS)
    if request.fmt.token_id(mistral.ARGS) is None:
        items = {"anyOf": [call_object_schema(f, "arguments", f"#/items/anyOf/{i}")
                           for i, f in enumerate(request.functions)]}
        schema = {"type": "array", "items": items, "minItems": 1, **({} if request.several else {"maxItems": 1})}
        return _lines(f'start: {calls} " "? list', f"list: {json_rule(schema)}"), ""
    call_id = ""
    if request.fmt.token_id(mistral.CALL_ID) is not None:
        call_id = f"({request.mark(mistral.CALL_ID)} /[A-Za-z0-9]{{9}}/)? "
    functions = [f"f{i}: {calls} {literal(f.name)} {call_id}{request.mark(mistral.ARGS)} a{i}\n"
                 f"a{i}: {json_rule(arguments_schema(f))}" for i, f in enumerate(request.functions)]
    return _lines(f"start: {request.repeated('call')}", f"call: {' | '.join(_names(request))}", *functions), ""


def _llama3(request: _Request) -> tuple[str, str]:
    """The bare JSON {"name": ..., "parameters": {...}} a Llama 3.x reply is; one call (the template takes one)."""
    functions = [f"f{i}: {json_rule(call_object_schema(f, 'parameters'))}" for i, f in enumerate(request.functions)]
    return _lines(f"start: {' | '.join(_names(request))}", *functions), ""


def _harmony(request: _Request) -> tuple[str, str]:
    """An optional analysis message, then one commentary message to functions.NAME (it ends with <|call|>, one of
    gpt-oss's end-of-generation tokens, so the grammar ends with the arguments)."""
    channel, message = request.mark(harmony.CHANNEL), request.mark(harmony.MESSAGE)
    analysis = (f'analysis: {channel} "analysis" {message} FREE {request.mark(harmony.END)} '
                f'{request.mark(harmony.START)} "assistant"')
    content_type = '" json"'
    if request.fmt.token_id(harmony.CONSTRAIN) is not None:
        content_type = f'(" json" | " "? {request.mark(harmony.CONSTRAIN)} "json")'
    functions = []
    for i, f in enumerate(request.functions):
        to = f"to=functions.{f.name}"
        header = f'({channel} {literal("commentary " + to)} | {literal(" " + to)} {channel} "commentary")'
        functions.append(f"f{i}: {header} {content_type} {message} a{i}\na{i}: {json_rule(arguments_schema(f))}")
    return _lines(f"start: analysis? ({' | '.join(_names(request))})", analysis, _FREE, *functions), ""


def _gemma4(request: _Request) -> tuple[str, str]:
    """<|tool_call>call:NAME{key:<|"|>text<|"|>,…}<tool_call|> per call, after an optional thought channel when the
    prompt leaves thinking on."""
    quote = request.fmt.token_id(QUOTE)
    if quote is None:
        raise ConstraintError("invalid", f"a forced gemma4 tool call needs {QUOTE} as a token of the tokenizer")
    arguments = GemmaArguments(f"<[{quote}]>", "g")
    functions = [f"f{i}: {request.mark(gemma4.CALL_OPEN)} {literal('call:' + f.name)} "
                 f"{arguments.arguments(f.name, arguments_schema(f))} {request.mark(gemma4.CALL_CLOSE)}"
                 for i, f in enumerate(request.functions)]
    start = request.repeated(f"({' | '.join(_names(request))})")
    prompt = request.prompt_text
    if gemma4.starts_in_thought(prompt):
        start = f"FREE {request.mark(gemma4.CHANNEL_CLOSE)} {start}"
    elif not prompt.endswith(gemma4.CHANNEL_CLOSE):
        start = (f'({request.mark(gemma4.CHANNEL_OPEN)} "thought\\n" FREE {request.mark(gemma4.CHANNEL_CLOSE)})? '
                 f"{start}")
    rules = [f"{name}: {body}" for name, body in arguments.rules.items()]
    return _lines(f"start: {start}", *functions, _FREE, *rules), ""


def _names(request: _Request) -> list[str]:
    return [f"f{i}" for i in range(len(request.functions))]


def _lines(*rules: str) -> str:
    return "\n".join(rules) + "\n"


_BUILDERS: dict[str, Callable[[_Request], tuple[str, str]]] = {
    "qwen3": _tagged, "qwq": _tagged, "hermes": _tagged, "mistral": _mistral, "llama3": _llama3,
    "harmony": _harmony, "gemma4": _gemma4,
}
