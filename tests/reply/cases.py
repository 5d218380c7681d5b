"""Model replies as each template teaches its model to write them, with what a parser must read out of them.

`well_formed` cases put no marker into text or reasoning; malformed ones hand a call's raw text back as text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

PARIS = {"city": "Paris"}
LONDON = {"city": "London"}


@dataclass(frozen=True)
class Case:
    label: str
    prompt: str
    output: str
    text: str = ""
    reasoning: str = ""
    calls: list = field(default_factory=list)  # (name, arguments, id or None for a generated one)
    stop: str = ""
    tools: bool = True
    well_formed: bool = True


def _qwen_call(name: str, arguments: dict) -> str:
    return '<tool_call>\n{"name": "' + name + '", "arguments": ' + json.dumps(arguments) + "}\n</tool_call>"


QWEN_PROMPT = "<|im_start|>user\nWhat's the weather in Paris?<|im_end|>\n<|im_start|>assistant\n"
QWEN_OFF = QWEN_PROMPT + "<think>\n\n</think>\n\n"
QWQ_PROMPT = QWEN_PROMPT + "<think>\n"
PARIS_CALL = _qwen_call("get_weather", PARIS)
BROKEN_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>'

QWEN3 = [
    Case("reasoning and answer", QWEN_PROMPT,
         "<think>\nThe user asks for 2+2. Adding gives 4.\n</think>\n\n2+2 equals 4.",
         text="2+2 equals 4.", reasoning="The user asks for 2+2. Adding gives 4.", stop="<|im_end|>"),
    Case("one call", QWEN_OFF, PARIS_CALL, calls=[("get_weather", PARIS, None)], stop="<|im_end|>"),
    Case("two calls", QWEN_OFF, PARIS_CALL + "\n" + _qwen_call("get_weather", LONDON),
         calls=[("get_weather", PARIS, None), ("get_weather", LONDON, None)], stop="<|im_end|>"),
    Case("text before a call", QWEN_OFF, "Let me check the weather.\n" + PARIS_CALL,
         text="Let me check the weather.", calls=[("get_weather", PARIS, None)]),
    Case("malformed call", QWEN_OFF, "Checking.\n" + BROKEN_CALL, text="Checking.\n" + BROKEN_CALL,
         well_formed=False),
    Case("call without a name", QWEN_OFF, '<tool_call>\n{"arguments": {}}\n</tool_call>',
         text='<tool_call>\n{"arguments": {}}\n</tool_call>', well_formed=False),
    Case("reasoning then call", QWEN_PROMPT, "<think>\nI need the weather tool.\n</think>\n\n" + PARIS_CALL,
         reasoning="I need the weather tool.", calls=[("get_weather", PARIS, None)]),
    Case("cut while reasoning", QWEN_PROMPT, "<think>\nStill thinking about <tool_call> and",
         reasoning="Still thinking about <tool_call> and", well_formed=False),
    Case("tools off", QWEN_OFF, "Use <tool_call> tags.", text="Use <tool_call> tags.", tools=False,
         well_formed=False),
    Case("string arguments", QWEN_OFF,
         '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}\n</tool_call>',
         calls=[("get_weather", PARIS, None)]),
    Case("answer with angle brackets", QWEN_OFF, "Since 1 < 2 and a <b> tag\nends here.",
         text="Since 1 < 2 and a <b> tag\nends here."),
]

QWQ = [
    Case("reasoning and answer", QWQ_PROMPT, "The user asks for 2+2. Adding gives 4.\n</think>\n\n2+2 equals 4.",
         text="2+2 equals 4.", reasoning="The user asks for 2+2. Adding gives 4.", stop="<|im_end|>"),
    Case("reasoning then call", QWQ_PROMPT, "I need the weather tool.\n</think>\n\n" + PARIS_CALL,
         reasoning="I need the weather tool.", calls=[("get_weather", PARIS, None)]),
    Case("reasoning then two calls", QWQ_PROMPT,
         "Two cities.\n</think>\n\n" + PARIS_CALL + "\n" + _qwen_call("get_weather", LONDON),
         reasoning="Two cities.", calls=[("get_weather", PARIS, None), ("get_weather", LONDON, None)]),
    Case("reasoning, text, malformed call", QWQ_PROMPT, "Hm.\n</think>\n\nOK.\n" + BROKEN_CALL,
         reasoning="Hm.", text="OK.\n" + BROKEN_CALL, well_formed=False),
    Case("call without its closing tag", QWQ_PROMPT,
         'Go.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n',
         reasoning="Go.", calls=[("get_weather", PARIS, None)], stop="<|im_end|>"),
]

HERMES_PROMPT = "<|im_start|>user\nWhat's the weather in Paris?<|im_end|>\n<|im_start|>assistant\n"
HERMES = [
    Case("answer", HERMES_PROMPT, "It is sunny.", text="It is sunny."),
    Case("one call", HERMES_PROMPT, PARIS_CALL, calls=[("get_weather", PARIS, None)], stop="<|im_end|>"),
    Case("two calls", HERMES_PROMPT, PARIS_CALL + "\n" + _qwen_call("get_time", {}),
         calls=[("get_weather", PARIS, None), ("get_time", {}, None)]),
    Case("text before a call", HERMES_PROMPT, "Let me check.\n" + PARIS_CALL, text="Let me check.",
         calls=[("get_weather", PARIS, None)]),
    Case("malformed call", HERMES_PROMPT, BROKEN_CALL, text=BROKEN_CALL, well_formed=False),
    Case("think tags are text", HERMES_PROMPT, "<think>\nx\n</think>", text="<think>\nx\n</think>",
         well_formed=False),
]

R1_PROMPT = "<｜User｜>What is 2+2?<｜Assistant｜><think>\n"
THINK = [
    Case("reasoning and answer", R1_PROMPT, "Adding gives 4.\n</think>\n\n4.", reasoning="Adding gives 4.", text="4."),
    Case("opened by the reply", "<｜User｜>Hi<｜Assistant｜>", "<think>\nGreet.\n</think>\n\nHello!",
         reasoning="Greet.", text="Hello!"),
    Case("no reasoning", "<｜User｜>Hi<｜Assistant｜>", "  Hello!", text="  Hello!"),
    Case("cut while reasoning", R1_PROMPT, "Adding gives", reasoning="Adding gives"),
]

MISTRAL_PROMPT = "[INST]What's the weather in Paris?[/INST]"
MISTRAL_CALL = '[TOOL_CALLS]get_weather[CALL_ID]abc123def[ARGS]{"city": "Paris"}'
MISTRAL = [
    Case("answer", MISTRAL_PROMPT, "Paris is sunny [today].", text="Paris is sunny [today].", stop="</s>"),
    Case("one call", MISTRAL_PROMPT, MISTRAL_CALL, calls=[("get_weather", PARIS, "abc123def")], stop="</s>"),
    Case("two calls", MISTRAL_PROMPT,
         MISTRAL_CALL + '[TOOL_CALLS]get_weather[CALL_ID]xyz789ghi[ARGS]{"city": "London"}',
         calls=[("get_weather", PARIS, "abc123def"), ("get_weather", LONDON, "xyz789ghi")], stop="</s>"),
    Case("text before a call", MISTRAL_PROMPT, "Let me check." + MISTRAL_CALL, text="Let me check.",
         calls=[("get_weather", PARIS, "abc123def")]),
    Case("no call id", MISTRAL_PROMPT, '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
         calls=[("get_weather", PARIS, None)]),
    Case("JSON list", MISTRAL_PROMPT,
         '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
         '{"name": "get_time", "arguments": {}, "id": "t1m3t1m3x"}]',
         calls=[("get_weather", PARIS, None), ("get_time", {}, "t1m3t1m3x")], stop="</s>"),
    Case("malformed call", MISTRAL_PROMPT, '[TOOL_CALLS]get_weather[ARGS]{"city": ',
         text='[TOOL_CALLS]get_weather[ARGS]{"city": ', well_formed=False),
    Case("tools off", MISTRAL_PROMPT, MISTRAL_CALL, text=MISTRAL_CALL, tools=False, well_formed=False),
]

LLAMA_PROMPT = "<|start_header_id|>assistant<|end_header_id|>\n\n"
LLAMA_JSON = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
LLAMA3 = [
    Case("answer", LLAMA_PROMPT, "Paris is sunny.", text="Paris is sunny.", stop="<|eot_id|>"),
    Case("one call", LLAMA_PROMPT, LLAMA_JSON, calls=[("get_weather", PARIS, None)], stop="<|eot_id|>"),
    Case("one call after blank lines", LLAMA_PROMPT, "\n " + LLAMA_JSON, calls=[("get_weather", PARIS, None)]),
    Case("arguments key", LLAMA_PROMPT, '{"name": "get_weather", "arguments": {"city": "Paris"}}',
         calls=[("get_weather", PARIS, None)]),
    Case("two calls", LLAMA_PROMPT, LLAMA_JSON + '; {"name": "get_weather", "parameters": {"city": "London"}}',
         calls=[("get_weather", PARIS, None), ("get_weather", LONDON, None)]),
    Case("python tag JSON", LLAMA_PROMPT, "<|python_tag|>" + LLAMA_JSON, calls=[("get_weather", PARIS, None)],
         stop="<|eom_id|>"),
    Case("built-in call", LLAMA_PROMPT, '<|python_tag|>brave_search.call(query="weather in Paris")',
         calls=[("brave_search", {"query": "weather in Paris"}, None)], stop="<|eom_id|>"),
    Case("text before a call", LLAMA_PROMPT, "Searching.<|python_tag|>" + LLAMA_JSON, text="Searching.",
         calls=[("get_weather", PARIS, None)]),
    Case("malformed call", LLAMA_PROMPT, '{"name": "get_weather", "parameters": {"city": }',
         text='{"name": "get_weather", "parameters": {"city": }', well_formed=False),
    Case("JSON that is no call", LLAMA_PROMPT, '{"answer": 4}', text='{"answer": 4}'),
    Case("tools off", LLAMA_PROMPT, LLAMA_JSON, text=LLAMA_JSON, tools=False),
]

HARMONY_PROMPT = "<|start|>user<|message|>What's the weather in Paris?<|end|><|start|>assistant"
ANALYSIS = "<|channel|>analysis<|message|>Need the weather tool.<|end|><|start|>assistant"
HARMONY_CALL = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}'
HARMONY = [
    Case("reasoning and answer", HARMONY_PROMPT,
         "<|channel|>analysis<|message|>User asks 2+2.<|end|><|start|>assistant<|channel|>final<|message|>"
         "2+2 equals 4.", reasoning="User asks 2+2.", text="2+2 equals 4.", stop="<|return|>"),
    Case("one call", HARMONY_PROMPT, HARMONY_CALL, calls=[("get_weather", PARIS, None)], stop="<|call|>"),
    Case("recipient in the header", HARMONY_PROMPT,
         ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}',
         calls=[("get_weather", PARIS, None)], stop="<|call|>"),
    Case("reasoning then call", HARMONY_PROMPT, ANALYSIS + HARMONY_CALL, reasoning="Need the weather tool.",
         calls=[("get_weather", PARIS, None)], stop="<|call|>"),
    Case("text before a call", HARMONY_PROMPT,
         "<|channel|>commentary<|message|>Checking the weather.<|end|><|start|>assistant" + HARMONY_CALL,
         text="Checking the weather.", calls=[("get_weather", PARIS, None)], stop="<|call|>"),
    Case("two calls", HARMONY_PROMPT,
         HARMONY_CALL + "<|call|><|start|>assistant" + HARMONY_CALL.replace("Paris", "London"),
         calls=[("get_weather", PARIS, None), ("get_weather", LONDON, None)], stop="<|call|>"),
    Case("malformed call", HARMONY_PROMPT, HARMONY_CALL[:-1], text=HARMONY_CALL[:-1] + "<|call|>",
         stop="<|call|>", well_formed=False),
    Case("answer with its end in the text", HARMONY_PROMPT, "<|channel|>final<|message|>Sunny.<|return|>",
         text="Sunny."),
    Case("cut in a header", HARMONY_PROMPT, ANALYSIS + "<|channel|>fin", reasoning="Need the weather tool."),
    Case("tools off", HARMONY_PROMPT, HARMONY_CALL, text='{"city": "Paris"}', tools=False),
]

GEMMA_PROMPT = "<|turn>user\nWhat's the weather in Paris?<turn|>\n<|turn>model\n"
GEMMA_OFF = GEMMA_PROMPT + "<|channel>thought\n<channel|>"
GEMMA_CALL = '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
GEMMA4 = [
    Case("reasoning and answer", GEMMA_PROMPT, "<|channel>thought\nAdding gives 4.<channel|>2+2 equals 4.",
         reasoning="Adding gives 4.", text="2+2 equals 4.", stop="<turn|>"),
    Case("one call", GEMMA_OFF, GEMMA_CALL, calls=[("get_weather", PARIS, None)], stop="<turn|>"),
    Case("two calls", GEMMA_OFF, GEMMA_CALL + GEMMA_CALL.replace("Paris", "London"),
         calls=[("get_weather", PARIS, None), ("get_weather", LONDON, None)]),
    Case("text before a call", GEMMA_OFF, "Let me check." + GEMMA_CALL, text="Let me check.",
         calls=[("get_weather", PARIS, None)]),
    Case("nested arguments", GEMMA_OFF,
         '<|tool_call>call:plan{days:3,flags:[true,false,null],place:{city:<|"|>Paris, {FR}<|"|>,zip:75001},'
         'ratio:-1.5e2}<tool_call|>',
         calls=[("plan", {"days": 3, "flags": [True, False, None], "place": {"city": "Paris, {FR}", "zip": 75001},
                          "ratio": -150.0}, None)]),
    Case("malformed call", GEMMA_OFF, "<|tool_call>call:get_weather{city:Paris}<tool_call|>",
         text="<|tool_call>call:get_weather{city:Paris}<tool_call|>", well_formed=False),
    Case("reasoning then call", GEMMA_PROMPT, "<|channel>thought\nNeed the tool.<channel|>" + GEMMA_CALL,
         reasoning="Need the tool.", calls=[("get_weather", PARIS, None)]),
    Case("tools off", GEMMA_OFF, GEMMA_CALL, text=GEMMA_CALL, tools=False, well_formed=False),
]

CASES: dict[str, list[Case]] = {"qwen3": QWEN3, "qwq": QWQ, "hermes": HERMES, "think": THINK, "mistral": MISTRAL,
                                "llama3": LLAMA3, "harmony": HARMONY, "gemma4": GEMMA4}

# The markers of each format, for the check that no piece of one leaks into text or reasoning.
MARKERS: dict[str, list[str]] = {
    "qwen3": ["<think>", "</think>", "<tool_call>", "</tool_call>"],
    "qwq": ["<think>", "</think>", "<tool_call>", "</tool_call>"],
    "hermes": ["<tool_call>", "</tool_call>"],
    "think": ["<think>", "</think>"],
    "mistral": ["[TOOL_CALLS]", "[CALL_ID]", "[ARGS]"],
    "llama3": ["<|python_tag|>"],
    "harmony": ["<|start|>", "<|channel|>", "<|constrain|>", "<|message|>", "<|end|>", "<|call|>", "<|return|>"],
    "gemma4": ["<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", '<|"|>'],
}
