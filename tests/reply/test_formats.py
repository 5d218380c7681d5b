"""The format chosen from each real template and its tokenizer's tokens, the "plain" fallback, and parsers reading
replies to prompts the real templates render (whose end says whether the reply starts inside reasoning)."""

from __future__ import annotations

import pytest

from mlxd.reply import FORMAT_NAMES, ReplyFormat, reply_format
from tests.reply import tokens
from tests.reply.render import render, source
from tests.reply.streaming import parse

QWEN3 = "Qwen-Qwen3-0.6B.jinja"
QWQ = "Qwen-QwQ-32B.jinja"
HERMES = "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja"
LLAMA = "meta-llama-Llama-3.3-70B-Instruct.jinja"
MISTRAL = "Mistral-Small-3.2-24B-Instruct-2506.jinja"
GPT_OSS = "openai-gpt-oss-120b.jinja"
GEMMA4 = "gemma4.jinja"

REAL = [
    (QWEN3, tokens.QWEN, "qwen3", ["<think>", "</think>", "<tool_call>", "</tool_call>"]),
    (QWQ, tokens.QWEN, "qwq", ["<think>", "</think>", "<tool_call>", "</tool_call>"]),
    (HERMES, tokens.HERMES, "hermes", ["<tool_call>", "</tool_call>"]),
    (LLAMA, tokens.LLAMA, "llama3", ["<|python_tag|>", "<|eot_id|>", "<|eom_id|>"]),
    (MISTRAL, tokens.MISTRAL, "mistral", ["[TOOL_CALLS]", "[CALL_ID]", "[ARGS]"]),
    (GPT_OSS, tokens.HARMONY, "harmony", ["<|start|>", "<|channel|>", "<|constrain|>", "<|message|>", "<|end|>",
                                          "<|call|>", "<|return|>"]),
    (GEMMA4, tokens.GEMMA, "gemma4", ["<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", '<|"|>']),
]


@pytest.mark.parametrize("template, special, name, markers", REAL)
def test_the_format_of_each_real_template(template, special, name, markers):
    fmt = reply_format(source(template), special)
    assert fmt.name == name
    assert fmt.token_ids == tuple((marker, special[marker]) for marker in markers)
    assert all(fmt.token_id(marker) == special[marker] for marker in markers)


@pytest.mark.parametrize("template, special, missing", [
    (MISTRAL, tokens.MISTRAL, "[TOOL_CALLS]"),
    (LLAMA, tokens.LLAMA, "<|eot_id|>"),
    (GPT_OSS, tokens.HARMONY, "<|message|>"),
    (GEMMA4, tokens.GEMMA, "<channel|>"),
    (GEMMA4, tokens.GEMMA, "<|tool_call>"),
])
def test_a_tokenizer_without_a_needed_marker_gets_plain(template, special, missing):
    fmt = reply_format(source(template), {k: v for k, v in special.items() if k != missing})
    assert fmt == ReplyFormat("plain")


def test_tags_written_as_text_need_no_tokens():
    # Qwen's tags are plain added tokens in some tokenizers and none at all in others: the format stands.
    assert reply_format(source(QWEN3), {}).name == "qwen3"
    assert reply_format(source(HERMES), {}) == ReplyFormat("hermes")


@pytest.mark.parametrize("template, name", [
    ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}", "plain"),
    ("{{ messages[0].content }}<｜Assistant｜><think>\n", "think"),
    ("{{ content.split('</think>')[-1] }}", "think"),
    ("{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{{ m.content }}<|eot_id|>{% endfor %}",
     "plain"),
    ("", "plain"),
])
def test_templates_that_teach_little(template, name):
    assert reply_format(template, tokens.QWEN | tokens.LLAMA).name == name


def test_unknown_format_names_are_refused():
    assert "plain" in FORMAT_NAMES
    with pytest.raises(ValueError, match="unknown reply format 'nope'"):
        ReplyFormat("nope")


def test_plain_is_all_text():
    got = parse(ReplyFormat("plain"), "", ["<think>a", "</think><tool_call>"], "<|im_end|>")
    assert got.outcome() == ("<think>a</think><tool_call>", "", [])


PARIS_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
CALL = [("get_weather", {"city": "Paris"})]


@pytest.mark.parametrize("template, special, context, reply, stop, expected", [
    (QWEN3, tokens.QWEN, {}, "<think>\nSunny?\n</think>\n\n" + PARIS_CALL, "<|im_end|>", ("", "Sunny?", CALL)),
    # Thinking off: the prompt closes an empty think block, and a <think> the model writes anyway is text.
    (QWEN3, tokens.QWEN, {"enable_thinking": False}, "<think>x", "<|im_end|>", ("<think>x", "", [])),
    (QWEN3, tokens.QWEN, {"enable_thinking": False}, PARIS_CALL, "<|im_end|>", ("", "", CALL)),
    (QWQ, tokens.QWEN, {}, "Sunny?\n</think>\n\n" + PARIS_CALL, "<|im_end|>", ("", "Sunny?", CALL)),
    (HERMES, tokens.HERMES, {}, PARIS_CALL, "<|im_end|>", ("", "", CALL)),
    (LLAMA, tokens.LLAMA, {}, '{"name": "get_weather", "parameters": {"city": "Paris"}}', "<|eot_id|>",
     ("", "", CALL)),
    (MISTRAL, tokens.MISTRAL, {}, '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', "</s>", ("", "", CALL)),
    (GPT_OSS, tokens.HARMONY, {}, "<|channel|>analysis<|message|>Sunny?<|end|><|start|>assistant<|channel|>"
     'commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}', "<|call|>",
     ("", "Sunny?", CALL)),
    (GEMMA4, tokens.GEMMA, {"enable_thinking": True},
     '<|channel>thought\nSunny?<channel|><|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>',
     "<turn|>", ("", "Sunny?", CALL)),
    (GEMMA4, tokens.GEMMA, {}, "It is sunny.", "<turn|>", ("It is sunny.", "", [])),
])
def test_replies_to_rendered_prompts(template, special, context, reply, stop, expected):
    prompt = render(template, **context)
    fmt = reply_format(source(template), special)
    assert parse(fmt, prompt, list(reply), stop).outcome() == expected
