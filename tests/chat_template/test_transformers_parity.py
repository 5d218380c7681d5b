"""render_chat against Hugging Face transformers: seven Hub templates x the conversations of RENDER_NOTES.md, built as
ChatMessages, render byte for byte as apply_chat_template(tokenize=False) renders the same chats as dicts
(expected.json, written once by make_expected.py), and where transformers raises mlxd rejects the request with the
same message."""

import json

import pytest

from mlxd.errors import InvalidRequest
from mlxd.service.chat import render_chat
from tests.chat_template.chats import NOW, TEMPLATES, chat, make_tokenizer, template_source

EXPECTED = json.loads((TEMPLATES / "expected.json").read_text(encoding="utf-8"))
CONVERSATIONS = EXPECTED["conversations"]
CASES = [(template, name) for template, renders in EXPECTED["renders"].items() for name in renders]
WITH_TOOLS = [(template, name) for template, name in CASES if CONVERSATIONS[name]["tools"]]


def test_the_expected_renderings_cover_every_template_and_conversation():
    assert sorted(EXPECTED["renders"]) == sorted(path.name for path in TEMPLATES.glob("*.jinja"))
    assert set(CONVERSATIONS) == {"a", "b", "b_id9", "b_nogen", "c", "c_think_on", "c_loop"}
    assert EXPECTED["now"] == NOW.isoformat() and EXPECTED["special_tokens"] == {"bos_token": "<BOS>",
                                                                                 "eos_token": "<EOS>"}
    assert len(CASES) == 49 and sum("error" in EXPECTED["renders"][t][n] for t, n in CASES) == 6


def _check(template: str, name: str, **rendering: object) -> None:
    expected = EXPECTED["renders"][template][name]
    tokenizer = make_tokenizer(template_source(template))
    request = chat(CONVERSATIONS[name], **rendering)
    if "error" in expected:
        with pytest.raises(InvalidRequest) as raised:
            render_chat(tokenizer, request)
        assert str(raised.value) == f"the chat template rejected the messages: {expected['error']}"
        return
    rendered = render_chat(tokenizer, request)
    assert rendered.text == expected["text"]
    # No client text forges a special token here, so the ids are the text's own.
    assert rendered.ids == tokenizer.encode(expected["text"], add_special_tokens=False, parse_special=True)
    assert rendered.template == template_source(template)
    assert rendered.tools == (CONVERSATIONS[name]["tools"] or [])


@pytest.mark.parametrize("template, name", CASES)
def test_renders_as_transformers(template, name):
    _check(template, name)


@pytest.mark.parametrize("tool_form", ["json", "bare"])
@pytest.mark.parametrize("template, name", WITH_TOOLS)
def test_tools_sent_as_json_render_the_same(template, name, tool_form):
    _check(template, name, tool_form=tool_form)


@pytest.mark.parametrize("template, name", CASES)
def test_the_same_template_as_a_request_override_renders_the_same(template, name):
    expected = EXPECTED["renders"][template][name]
    request = chat(CONVERSATIONS[name], chat_template=template_source(template))
    tokenizer = make_tokenizer("the model's own template, not used")
    if "error" in expected:
        with pytest.raises(InvalidRequest, match="rejected the messages"):
            render_chat(tokenizer, request)
        return
    rendered = render_chat(tokenizer, request)
    assert rendered.text == expected["text"]
    assert rendered.template == template_source(template)
