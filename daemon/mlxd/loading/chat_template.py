"""Chat templates compiled and rendered like transformers' apply_chat_template, in a jinja2 sandbox.

A template is code from the model folder or, per request, from the client: both run in an
ImmutableSandboxedEnvironment with transformers' filters and globals, and the data they render (messages, tools,
template arguments) is only ever passed as variables, never compiled. Safe to use from any thread.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mlxd.errors import InvalidRequest

# The current local time for strftime_now; tests pass a fixed one.
Clock = Callable[[], datetime]

# A client's template is compiled per distinct source; this bounds what one request makes the daemon parse.
MAX_OVERRIDE_BYTES = 128 * 1024
OVERRIDE_CACHE_SIZE = 32

# What one render may cost: a client's template is code, and a preparation thread held by a loop that never ends
# would cost every client. Real templates render in milliseconds; the bounds are checked on every call the
# template makes, every RANGE_CHECK_EVERY items of a range it loops over, and every repetition (`*`) it computes.
RENDER_SECONDS = 5.0
MAX_REPEATED_ITEMS = 1 << 20
RANGE_CHECK_EVERY = 1024

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
        _deadline.value = time.monotonic() + RENDER_SECONDS
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


# The current render's deadline, per thread (renders run on several preparation threads at once).
_deadline = threading.local()


def _check_time() -> None:
    if time.monotonic() > getattr(_deadline, "value", float("inf")):
        raise jinja2.exceptions.SecurityError(f"the template ran for more than {RENDER_SECONDS:g} s")


class _BudgetedRange:
    """range() for templates: a sequence like Python's (length, indexing, membership), whose iteration checks the
    render's deadline, so that nested loops over ranges cannot run for hours."""

    def __init__(self, *args: int) -> None:
        self._range = range(*args)
        if len(self._range) > jinja2.sandbox.MAX_RANGE:
            raise OverflowError(f"range of {len(self._range)} items; at most {jinja2.sandbox.MAX_RANGE}")

    def __iter__(self) -> Any:
        for i, value in enumerate(self._range):
            if i % RANGE_CHECK_EVERY == 0:
                _check_time()
            yield value

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index: Any) -> Any:
        return self._range[index]

    def __contains__(self, value: object) -> bool:
        return value in self._range


class _BudgetedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox with a time bound on every call and a size bound on repetition (`"x" * 10**9`)."""

    intercepted_binops = frozenset({"*", "**"})

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja's signature)
        _check_time()
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int) and abs(right) > 1024 and not (isinstance(left, int) and abs(left) <= 1):
                raise jinja2.exceptions.SecurityError(f"power with an exponent of {right} is not allowed")
            return left ** right
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, (str, list, tuple)) and isinstance(count, int):
                if len(sequence) * count > MAX_REPEATED_ITEMS:
                    raise jinja2.exceptions.SecurityError(
                        f"repeating {len(sequence)} items {count} times exceeds {MAX_REPEATED_ITEMS}")
        return left * right


def _environment(clock: Clock) -> ImmutableSandboxedEnvironment:
    env = _BudgetedSandbox(trim_blocks=True, lstrip_blocks=True,
                           extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.globals["range"] = _BudgetedRange
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: clock().strftime(fmt)
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env
