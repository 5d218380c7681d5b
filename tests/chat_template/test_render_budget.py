"""A template is code a client may send: one render is bounded in time (checked on every call, every loop over a
range, and a fan-out of recursive macros) and in the size of what repetition makes, so a hostile template costs
its own request an INVALID_ARGUMENT, not a preparation thread for hours or the daemon's memory."""

from __future__ import annotations

import time

import pytest

from mlxd.errors import InvalidRequest
from mlxd.loading import chat_template
from tests.chat_template.chats import make_tokenizer

USER = [{"role": "user", "content": "hi"}]


def _render(source: str) -> str:
    return make_tokenizer(None).apply_chat_template(USER, chat_template=source)


@pytest.mark.parametrize("source", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
])
def test_a_template_that_runs_too_long_is_stopped(monkeypatch, source):
    monkeypatch.setattr(chat_template, "RENDER_SECONDS", 0.3)
    started = time.monotonic()
    with pytest.raises(InvalidRequest, match="the template ran for more than|recursion"):
        _render(source)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("source,message", [
    ("{{ 'x' * 1000000000 }}", "repeating 1 items 1000000000 times"),
    ("{{ [1, 2] * 10000000 }}", "repeating 2 items"),
    ("{{ 1000000000 * 'x' }}", "repeating 1 items"),
    ("{{ 7 ** 1000000 }}", "power with an exponent of 1000000"),
    ("{% for i in range(10**9) %}{% endfor %}", "range of 1000000000 items"),
])
def test_repetition_that_would_take_the_daemons_memory_is_refused(source, message):
    with pytest.raises(InvalidRequest, match=message):
        _render(source)


@pytest.mark.parametrize("source,text", [
    ("{{ range(3) | list }}", "[0, 1, 2]"),
    ("{{ range(2, 9, 3) | length }}", "3"),
    ("{{ 2 in range(3) }} {{ range(10)[4] }} {{ range(5)[-1] }}", "True 4 4"),
    ("{% for i in range(3) %}{{ i }}{% if not loop.last %},{% endif %}{% endfor %}", "0,1,2"),
    ("{{ '-' * 3 }}{{ 2 ** 10 }}{{ 1.5 * 2 }}", "---10243.0"),
    ("{% for m in messages[::-1] %}{{ m.content * 2 }}{% endfor %}", "hihi"),
])
def test_ranges_and_arithmetic_still_behave_as_in_python(source, text):
    assert _render(source) == text
