"""Chat templates compiled and rendered like transformers' apply_chat_template, in a jinja2 sandbox.

A template is code from the model folder or, per request, from the client: both run in an
ImmutableSandboxedEnvironment with transformers' filters and globals, and the data they render (messages, tools,
template arguments) is only ever passed as variables, never compiled. Safe to use from any thread.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mlxd.errors import InvalidRequest

# The current local time for strftime_now; tests pass a fixed one.
Clock = Callable[[], datetime]

# A client's template is compiled per distinct source; this bounds what one request makes the daemon parse.
MAX_OVERRIDE_BYTES = 128 * 1024
OVERRIDE_CACHE_SIZE = 32

# Variables the renderer sets from the request itself; template arguments cannot replace them.
RESERVED_VARIABLES = ("messages", "tools", "add_generation_prompt")

# What a template raises on data it cannot handle: raise_exception and jinja's own errors (SecurityError and
# UndefinedError included), Python errors of operations on the wrong types, and runaway recursive macros.
_TEMPLATE_FAILURES = (jinja2.TemplateError, TypeError, ValueError, LookupError, ArithmeticError, RecursionError)


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template and the source it came from."""

    source: str
    compiled: jinja2.Template


class TemplateRenderer:
    """One sandboxed environment: compiles the model's template, compiles (and caches) client templates, renders."""

    def __init__(self, clock: Clock = datetime.now, *, cache_size: int = OVERRIDE_CACHE_SIZE) -> None:
        self._env = _environment(clock)
        self._cache: OrderedDict[bytes, ChatTemplate] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def compile(self, source: str) -> ChatTemplate:
        """The model's own template; jinja2.TemplateSyntaxError when it does not compile."""
        return ChatTemplate(source, self._env.from_string(source))

    def compile_override(self, source: str) -> ChatTemplate:
        """A client's template (ChatMessages.chat_template), from the cache when this source was compiled before."""
        size = len(source.encode("utf-8"))
        if size > MAX_OVERRIDE_BYTES:
            raise InvalidRequest(f"chat_template has {size} bytes; at most {MAX_OVERRIDE_BYTES} are accepted")
        key = hashlib.sha256(source.encode("utf-8")).digest()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        try:
            template = self.compile(source)
        except jinja2.TemplateSyntaxError as exc:
            raise InvalidRequest(f"chat_template does not compile: {exc} (line {exc.lineno})") from exc
        except RecursionError as exc:  # deeply nested expressions exhaust the parser's stack
            raise InvalidRequest(f"chat_template does not compile: it nests too deeply ({exc})") from exc
        with self._lock:
            self._cache[key] = template
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return template

    def render(self, template: ChatTemplate, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
               tools: list[dict[str, Any]] | None = None,
               chat_template_kwargs: Mapping[str, Any] | None = None) -> str:
        """The template's text for these inputs. chat_template_kwargs become template variables (special tokens,
        enable_thinking, reasoning_effort, ...); tools is None when the request has none, as in transformers."""
        variables = dict(chat_template_kwargs or {})
        for name in RESERVED_VARIABLES:
            if name in variables:
                raise InvalidRequest(f"chat_template_kwargs cannot set {name!r}: the request itself sets it")
        try:
            return template.compiled.render(messages=messages, tools=tools,
                                            add_generation_prompt=add_generation_prompt, **variables)
        except _TEMPLATE_FAILURES as exc:
            raise InvalidRequest(f"the chat template rejected the messages: {exc}") from exc


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; here it just renders."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # jinja2's own tojson escapes HTML characters, which would change the prompt text.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _TemplateDict:
    """`dict` for templates without the type itself, so a template cannot walk from it to other classes
    (transformers' hardening)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore-prefixed names, which could reach interpreter internals (as in
    transformers)."""

    # No named `self`: as in jinja2.utils.Namespace, so that namespace(self=...) works.
    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a namespace cannot hold the underscore-prefixed name {name!r}")


def _environment(clock: Clock) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: clock().strftime(fmt)
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env
