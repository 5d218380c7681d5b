"""Forced-call test material: tools, and each format's tokenizer markers, prompt and way of writing a call."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time",
    "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
                   "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]


def gemma_arguments(arguments: dict) -> str:
    """Flat arguments as Gemma 4's template writes them (sorted keys, <|"|> around strings)."""
    return "{" + ",".join(f'{key}:<|"|>{value}<|"|>' if isinstance(value, str) else f"{key}:{json.dumps(value)}"
                          for key, value in sorted(arguments.items())) + "}"


@dataclass(frozen=True)
class Spec:
    name: str
    markers: list[str]
    end: str
    prompt: str  # one that leaves no reasoning open
    write: Callable[[str, dict], str]  # one call's text
    several: bool  # whether a reply may hold several calls
    stop: str = ""

    def calls(self, *calls: tuple[str, dict]) -> str:
        return ("\n" if self.name in ("qwen3", "hermes") else "").join(self.write(n, a) for n, a in calls)


QWEN_MARKERS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
HARMONY_MARKERS = ["<|start|>", "<|channel|>", "<|constrain|>", "<|message|>", "<|end|>", "<|call|>", "<|return|>"]
GEMMA_MARKERS = ["<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", '<|"|>']
QWEN_OFF = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


def _qwen(name: str, arguments: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def _mistral_list_call(name: str, arguments: dict) -> str:
    return "[TOOL_CALLS][" + json.dumps({"name": name, "arguments": arguments}) + "]"


SPECS = [
    Spec("qwen3", QWEN_MARKERS, "<|im_end|>", QWEN_OFF, _qwen, True),
    Spec("hermes", ["<tool_call>", "</tool_call>"], "<|im_end|>", "<|im_start|>assistant\n", _qwen, True),
    Spec("mistral", ["[TOOL_CALLS]", "[CALL_ID]", "[ARGS]"], "</s>", "[/INST]",
         lambda n, a: f"[TOOL_CALLS]{n}[CALL_ID]abc123def[ARGS]{json.dumps(a)}", True),
    Spec("mistral", ["[TOOL_CALLS]"], "</s>", "[/INST]", _mistral_list_call, False),
    Spec("llama3", ["<|python_tag|>", "<|eot_id|>"], "<|eom_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n",
         lambda n, a: json.dumps({"name": n, "parameters": a}), False),
    Spec("harmony", HARMONY_MARKERS, "<|endoftext|>", "<|start|>assistant",
         lambda n, a: f"<|channel|>commentary to=functions.{n} <|constrain|>json<|message|>{json.dumps(a)}", False,
         stop="<|call|>"),
    Spec("gemma4", GEMMA_MARKERS, "<turn|>", "<|turn>model\n<|channel>thought\n<channel|>",
         lambda n, a: f"<|tool_call>call:{n}{gemma_arguments(a)}<tool_call|>", True),
]
SPEC_IDS = ["qwen3", "hermes", "mistral", "mistral list", "llama3", "harmony", "gemma4"]
