"""loading/chat_template.py through Tokenizer.apply_chat_template: tools and template arguments reach the template,
the clock is injectable, client templates compile once and within limits, template failures and sandbox violations
are InvalidRequest, and message text is data, never template code."""

from datetime import datetime

import pytest

from mlxd.errors import InvalidRequest, Unsupported
from mlxd.loading.chat_template import MAX_OVERRIDE_BYTES, RESERVED_VARIABLES, TemplateRenderer
from tests.chat_template.chats import make_tokenizer

USER = [{"role": "user", "content": "hi"}]


def test_tools_and_template_arguments_reach_the_template():
    tok = make_tokenizer("{{ tools | tojson }}|{{ enable_thinking }}|{{ reasoning_effort }}|"
                         "{{ add_generation_prompt }}")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    out = tok.apply_chat_template(USER, tools=tools, add_generation_prompt=False,
                                  chat_template_kwargs={"enable_thinking": False, "reasoning_effort": "high"})
    assert out == '[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]|False|high|False'


def test_without_tools_the_template_gets_none_as_in_transformers():
    tok = make_tokenizer("{{ tools is none }}|{{ tools is defined }}")
    assert tok.apply_chat_template(USER) == "True|True"


def test_special_tokens_are_variables_and_arguments_may_replace_them():
    tok = make_tokenizer("{{ bos_token }}|{{ eos_token }}|{{ pad_token is defined }}")
    assert tok.apply_chat_template(USER) == "<BOS>|<EOS>|False"
    # As transformers does: template arguments are laid over the special tokens.
    assert tok.apply_chat_template(USER, chat_template_kwargs={"eos_token": "</s>"}) == "<BOS>|</s>|False"


@pytest.mark.parametrize("name", RESERVED_VARIABLES)
def test_template_arguments_cannot_replace_the_request(name):
    tok = make_tokenizer("{{ messages }}")
    with pytest.raises(InvalidRequest, match=f"chat_template_kwargs cannot set '{name}'"):
        tok.apply_chat_template(USER, chat_template_kwargs={name: "x"})


def test_strftime_now_reads_the_injected_clock():
    tok = make_tokenizer("{{ strftime_now('%Y-%m-%d %H:%M') }}|{{ strftime_now('%d %b %Y') }}")
    assert tok.apply_chat_template(USER) == "2025-06-01 12:00|01 Jun 2025"
    renderer = TemplateRenderer(lambda: datetime(1999, 12, 31, 23, 59))
    assert renderer.render(renderer.compile("{{ strftime_now('%Y %H:%M') }}"), USER) == "1999 23:59"
    # The default clock is the real one.
    real = TemplateRenderer()
    assert real.render(real.compile("{{ strftime_now('%Y') }}"), USER) == str(datetime.now().year)


def test_an_override_replaces_the_models_template():
    tok = make_tokenizer("MODEL {{ messages[0].content }}")
    assert tok.apply_chat_template(USER) == "MODEL hi"
    assert tok.apply_chat_template(USER, chat_template="OVERRIDE {{ messages[0].content }}") == "OVERRIDE hi"
    assert tok.apply_chat_template(USER, chat_template="") == "MODEL hi"
    assert tok.chat_template == "MODEL {{ messages[0].content }}"


def test_an_override_serves_a_model_without_or_with_a_broken_template():
    for source in (None, "{% for m in messages %}"):
        tok = make_tokenizer(source)
        assert not tok.has_chat_template
        with pytest.raises(Unsupported):
            tok.apply_chat_template(USER)
        assert tok.apply_chat_template(USER, chat_template="{{ bos_token }}{{ messages | length }}") == "<BOS>1"


def test_overrides_are_compiled_once_and_the_cache_is_bounded():
    renderer = TemplateRenderer(cache_size=2)
    a, b, c = "A{{ 1 }}", "B{{ 2 }}", "C{{ 3 }}"
    first_a = renderer.compile_override(a)
    assert renderer.compile_override(a) is first_a
    first_b = renderer.compile_override(b)
    assert renderer.compile_override(a) is first_a  # a is now the most recent; c evicts b
    renderer.compile_override(c)
    assert renderer.compile_override(a) is first_a
    second_b = renderer.compile_override(b)
    assert second_b is not first_b and second_b.source == b
    assert renderer.render(second_b, USER) == "B2"


def test_override_size_is_capped_in_bytes():
    renderer = TemplateRenderer()
    at_cap = "x" * MAX_OVERRIDE_BYTES
    assert renderer.render(renderer.compile_override(at_cap), USER) == at_cap
    with pytest.raises(InvalidRequest, match=f"chat_template has {MAX_OVERRIDE_BYTES + 1} bytes; at most "
                                             f"{MAX_OVERRIDE_BYTES}"):
        renderer.compile_override(at_cap + "x")
    # Characters are counted as the UTF-8 bytes they take.
    with pytest.raises(InvalidRequest, match="bytes"):
        renderer.compile_override("é" * (MAX_OVERRIDE_BYTES // 2 + 1))


@pytest.mark.parametrize("source, message", [
    ("{% for m in messages %}", "Jinja was looking for the following tags: 'endfor' or 'else'"),
    ("ok\n{{ x + }}", r"unexpected 'end of print statement' \(line 2\)"),
    ("{% generation %}x", "endgeneration"),
])
def test_an_override_that_does_not_compile_is_invalid(source, message):
    tok = make_tokenizer(None)
    with pytest.raises(InvalidRequest, match=f"chat_template does not compile: .*{message}"):
        tok.apply_chat_template(USER, chat_template=source)


@pytest.mark.parametrize("source, message", [
    ("{{ raise_exception('Conversation roles must alternate!') }}", "Conversation roles must alternate!"),
    ("{{ messages[0].content + undefined_thing }}", "'undefined_thing' is undefined"),
    ("{{ messages[0].nothing.deeper }}", "has no attribute 'nothing'"),
    ("{{ messages[0].content + 1 }}", 'can only concatenate str \\(not "int"\\) to str'),
    ("{% for x in tools %}{% endfor %}", "'NoneType' object is not iterable"),
    ("{{ 1 / 0 }}", "division by zero"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursion"),
])
def test_a_template_that_raises_is_an_invalid_request_carrying_its_message(source, message):
    with pytest.raises(InvalidRequest, match=f"^the chat template rejected the messages: .*{message}"):
        make_tokenizer(source).apply_chat_template(USER)


def test_message_content_is_data_not_template_code():
    tok = make_tokenizer("{{ messages[0].content }}|{{ messages[0].content | tojson }}|{{ flavour }}")
    out = tok.apply_chat_template([{"role": "user", "content": "{{ 7*7 }}{% raw %}"}],
                                  chat_template_kwargs={"flavour": "{{ 6*7 }}"})
    assert out == '{{ 7*7 }}{% raw %}|"{{ 7*7 }}{% raw %}"|{{ 6*7 }}'


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ raise_exception.__globals__['os'] }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ (messages | attr('__class__'))() }}",
    "{{ strftime_now.__code__.co_consts }}",
    "{% set ns = namespace(_private=1) %}",
    "{% set ns = namespace(a=1) %}{% set ns.__dict__ = 2 %}",
    "{{ messages.append(1) }}",
    "{{ messages[0].update({'role': 'system'}) }}",
    "{{ dict.mro() }}",
])
def test_an_override_cannot_leave_the_sandbox(source):
    tok = make_tokenizer(None)
    with pytest.raises(InvalidRequest, match="the chat template rejected the messages: .*"
                                             "(is unsafe|underscore-prefixed name|has no attribute 'mro')"):
        tok.apply_chat_template(USER, chat_template=source)


def test_unsafe_attributes_print_as_nothing_rather_than_leak():
    # The sandbox answers an unsafe attribute with an undefined value; only using it raises (tests above).
    assert make_tokenizer("[{{ ''.__class__ }}]").apply_chat_template(USER) == "[]"
