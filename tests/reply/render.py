"""Rendering the fixture templates as RENDER_NOTES.md's reference renderer does (jinja2's sandbox, trim_blocks and
lstrip_blocks, a tojson that is json.dumps, a fixed clock), for prompts whose end the parsers read."""

from __future__ import annotations

import json
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tests.reply.tokens import TEMPLATES

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
QUESTION = [{"role": "user", "content": "What's the weather in Paris?"}]


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def render(template_file: str, messages: list[dict[str, Any]] = QUESTION, **context: Any) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda value, ensure_ascii=False, indent=None, separators=None, sort_keys=False: (
        json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys))
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: "2025-06-01"
    source = (TEMPLATES / template_file).read_text(encoding="utf-8")
    return env.from_string(source).render(messages=messages, tools=[WEATHER_TOOL], add_generation_prompt=True,
                                          bos_token="<BOS>", eos_token="<EOS>", **context)


def source(template_file: str) -> str:
    return (TEMPLATES / template_file).read_text(encoding="utf-8")
