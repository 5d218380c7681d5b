"""Spec -> llguidance grammar for one model's tokenizer: built once per model, compiled per spec on the gRPC
preparation threads (several at once), cached by the spec's content hash and bounded in size and work."""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import TYPE_CHECKING

import llguidance
import numpy as np
import tokenizers
from llguidance.gbnf_to_lark import gbnf_to_lark
from llguidance.numpy import fill_next_token_bitmask

from mlxd.constraints.embedded_schemas import embedded_schemas
from mlxd.constraints.errors import ConstraintError, ConstraintErrorCode
from mlxd.constraints.free_prefix import free_until
from mlxd.constraints.lone_escapes import ends_in_lone_backslash, schema_patterns
from mlxd.constraints.schema_numbers import decimal_json, inexact_number
from mlxd.constraints.spec import ConstraintSpec

if TYPE_CHECKING:  # a TypedDict of llguidance's stubs only, absent at run time
    from llguidance._lib import JsonCompileOptions

    from mlxd.constraints.mask_pool import MaskPool

# A schema or grammar larger than this is refused before llguidance reads it (RESOURCE_EXHAUSTED): the limits
# below bound the grammar llguidance builds, this bounds the text we parse and hash on the way there.
MAX_SOURCE_BYTES = 256 * 1024
# Compiled grammars kept per model; each holds a parser with its lexer, so the bound is on memory as well.
CACHE_ENTRIES = 128
# The JSON whitespace llguidance allows by default, with a bound on its length (spec.max_whitespace).
_JSON_WHITESPACE = r"[\x20\x0A\x0D\x09]"


def mask_words(width: int) -> int:
    """int32 words in one mask row covering token ids 0 .. width-1."""
    return (width + 31) // 32


def json_whitespace(bound: int | None) -> JsonCompileOptions:
    """llguidance's JSON options for at most `bound` whitespace characters between two JSON tokens (None or 0:
    compact JSON; the explicit None pattern clears one the schema may set)."""
    return {"whitespace_flexible": bool(bound),
            "whitespace_pattern": f"{_JSON_WHITESPACE}{{1,{bound}}}" if bound else None}


def parser_limits() -> llguidance.LLParserLimits:
    """llguidance's limits on the work one grammar may cost, tighter than its defaults where a hostile source
    showed them too loose. Measured on SmolLM2's 49k vocabulary: a regex such as x{1000}{1000} spent ~0.7 s on its
    first mask with the default initial lexer fuel (1M) and ~0.1 s with 200k; the per-token lexer fuel (200k by
    default, ~15 ms) is lowered to 50k (~4 ms, far above a real grammar's microseconds) so one row cannot stall the
    batch; the lexer's state count is lowered from 250k (up to ~500 MB, and every request's matcher grows its own)
    to 50k. The parser's limits (items per row and per step, grammar size) stay at llguidance's defaults."""
    return llguidance.LLParserLimits(
        initial_lexer_fuel=200_000,
        step_lexer_fuel=50_000,
        max_lexer_states=50_000,
        # Errors otherwise carry the parser state and the whole grammar: too much for a status message or a log.
        verbose_errors=False,
    )


# Fragments of llguidance's messages when a limit, not a mistake in the source, stopped it.
_LIMIT_MESSAGE = re.compile(r"too big|too large|too complex|too many|fuel|\(limit|limit exceeded|stack level exceeded"
                            r"|exceeds capacity|recursion limit", re.IGNORECASE)


def error_code(message: str) -> ConstraintErrorCode:
    """The code for one of llguidance's error messages: too_large where a limit was hit, else invalid."""
    return "too_large" if _LIMIT_MESSAGE.search(message) else "invalid"


class CompiledGrammar:
    """One validated grammar for one model: a ready matcher that each request copies (a copy costs microseconds
    where building one costs a millisecond or more), and the mask's shape."""

    def __init__(self, key: str, kind: str, grammar: str, prototype: llguidance.LLMatcher, width: int,
                 eos_token_ids: tuple[int, ...], warnings: tuple[str, ...], tokens: int | None = None) -> None:
        self.key = key
        self.kind = kind
        self.grammar = grammar  # llguidance's JSON form, for logs and tests
        self.width = width  # the mask covers token ids 0 .. width-1
        self.mask_words = mask_words(width)
        # The ids its tokenizer has, 0 .. tokens-1 (fewer than `width` where the logits are wider): no other is ever
        # allowed (engine/checked_greedy.py takes a greedy row's argmax among these).
        self.tokens = width if tokens is None else tokens
        self.eos_token_ids = eos_token_ids
        self.warnings = warnings
        self.pool: MaskPool | None = None  # the processes that fill its rows' masks (--mask-processes), if any
        self._prototype = prototype
        # The prototype is shared by every request with this spec; copies are taken one at a time so that no two
        # threads ever touch it at once (llguidance documents no thread safety for one matcher).
        self._lock = threading.Lock()

    def new_matcher(self) -> llguidance.LLMatcher:
        """A fresh matcher at the grammar's start, owned by the caller."""
        with self._lock:
            return self._prototype.deep_copy()


class GrammarCompiler:
    """Compiles ConstraintSpecs for one model. `tokenizer_json` is the Hugging Face `tokenizers` JSON (both the
    Hugging Face and the GGUF loaders make one); `vocab_size` is the logits width, which can exceed the tokenizer's
    vocabulary (a padded embedding): the mask covers it all and never allows an id the tokenizer lacks."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: list[int], *,
                 cache_entries: int = CACHE_ENTRIES, limits: llguidance.LLParserLimits | None = None,
                 mask_processes: int = 0) -> None:
        if cache_entries < 1:
            raise ValueError(f"cache_entries must be at least 1, not {cache_entries}")
        plain = tokenizers.Tokenizer.from_str(tokenizer_json)
        tokenizer_tokens = plain.get_vocab_size(with_added_tokens=True)
        # Added tokens (content -> id): an `after` marker that is one of them is matched as that token.
        self.added_tokens = {t.content: i for i, t in plain.get_added_tokens_decoder().items()}
        # A logits row narrower than the tokenizer (rare) still gets a mask over every token llguidance knows;
        # ids past the logits are never sampled, so the runner reads only the first vocab_size bits.
        self.width = max(vocab_size, tokenizer_tokens)
        self.tokens = tokenizer_tokens
        self.mask_words = mask_words(self.width)
        self.eos_token_ids = tuple(dict.fromkeys(eos_token_ids))
        # Expensive (a token trie over the whole vocabulary: ~0.2 s for 49k tokens), hence once per model.
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=self.width,
                                                eos_token=list(self.eos_token_ids) or None)
        self.limits = limits if limits is not None else parser_limits()
        self._cache_entries = cache_entries
        self._tokenizer_json = tokenizer_json
        self._mask_processes = mask_processes
        self._pool: MaskPool | None = None  # started by mask_pool(): the daemon's start, or a first grammar
        # key -> a compiled grammar, or the (code, message) of its failure: a hostile spec sent again costs a
        # lookup, not another run up to the limits.
        self._cache: OrderedDict[str, CompiledGrammar | tuple[ConstraintErrorCode, str]] = OrderedDict()
        # key -> the compile in progress, so that threads asking for the same spec at once wait for one compile.
        self._pending: dict[str, Future[CompiledGrammar]] = {}
        self._lock = threading.Lock()

    def cached(self) -> int:
        """How many specs the cache holds (compiled or failed)."""
        with self._lock:
            return len(self._cache)

    def compile(self, spec: ConstraintSpec) -> CompiledGrammar:
        """The compiled grammar for `spec`, from the cache when it is there; ConstraintError ("invalid" or
        "too_large") when it cannot be compiled. Safe to call from several threads at once."""
        with self._lock:
            hit = self._cache.get(spec.key)
            if hit is not None:
                self._cache.move_to_end(spec.key)
                return _result(hit)
            pending = self._pending.get(spec.key)
            owner = pending is None
            if pending is None:
                pending = self._pending[spec.key] = Future()
        if not owner:
            return pending.result()
        outcome: CompiledGrammar | tuple[ConstraintErrorCode, str]
        try:
            try:
                outcome = self._build(spec)
            except ConstraintError as exc:
                outcome = (exc.code, exc.message)
        except BaseException as exc:
            # A bug, not a verdict on the spec: the waiting threads get it too, and nothing is cached.
            with self._lock:
                del self._pending[spec.key]
            pending.set_exception(exc)
            raise
        with self._lock:
            self._cache[spec.key] = outcome
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)
            del self._pending[spec.key]
        if isinstance(outcome, CompiledGrammar):
            pending.set_result(outcome)
        else:
            pending.set_exception(ConstraintError(*outcome))
        return _result(outcome)

    def _build(self, spec: ConstraintSpec) -> CompiledGrammar:
        size = len(spec.source.encode("utf-8", "surrogatepass"))
        if size > MAX_SOURCE_BYTES:
            raise ConstraintError("too_large", f"the {spec.kind} source is {size} bytes; the limit is "
                                               f"{MAX_SOURCE_BYTES}")
        grammar = self._grammar_text(spec)
        if spec.after:
            grammar = free_until(grammar, spec.after, self.added_tokens.get(spec.after))
        # Building the matcher validates the grammar as LLMatcher.validate_grammar does (the same parser is
        # built, with the same messages); keeping it makes each request's matcher a copy. llguidance drops the GIL
        # while it builds.
        prototype = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0, limits=self.limits)
        _raise_if_failed(prototype, spec.kind)
        if spec.kind == "json_schema":
            self._refuse_inexact_numbers(decimal_json(spec.source), "the JSON schema")
        elif spec.kind == "lark":  # its %json schemas (a forced tool call's parameters) get what a json_schema gets
            for schema in embedded_schemas(spec.source):
                _refuse_lone_escapes(schema, "a %json schema")
                self._refuse_inexact_numbers(schema, "a %json schema")
        # The first mask builds the lexer states every request needs at its first token; computed here, on the
        # preparation thread, every copy starts with them (~1 ms saved per request on a 49k vocabulary).
        first = np.zeros((1, self.mask_words), dtype=np.int32)
        fill_next_token_bitmask(prototype, first)
        _raise_if_failed(prototype, spec.kind)
        if not first.any():
            raise ConstraintError("invalid", f"the {spec.kind} constraint allows no output at all")
        compiled = CompiledGrammar(spec.key, spec.kind, grammar, prototype, self.width, self.eos_token_ids,
                                   tuple(prototype.get_grammar_warnings()), self.tokens)
        compiled.pool = self.mask_pool()
        return compiled

    def mask_pool(self) -> MaskPool | None:
        """The mask processes (started at the first call), or None without any."""
        if self._mask_processes < 1:
            return None
        with self._lock:
            if self._pool is None:
                from mlxd.constraints.mask_pool import MaskPool  # it needs this module's error_code
                self._pool = MaskPool(self._tokenizer_json, self.width, self.eos_token_ids, self.limits,
                                      self._mask_processes)
            return self._pool

    def close(self) -> None:
        """Stop the mask processes, if any (they also end by themselves when this process exits)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _grammar_text(self, spec: ConstraintSpec) -> str:
        """llguidance's grammar (its JSON form) for the spec; not yet validated."""
        if spec.kind == "regex":
            if ends_in_lone_backslash(spec.source):
                raise ConstraintError("invalid", "the regex ends in a lone backslash (an escape of nothing)")
            return llguidance.LLMatcher.grammar_from_regex(spec.source)
        if spec.kind == "lark":
            return llguidance.LLMatcher.grammar_from_lark(spec.source)
        if spec.kind == "gbnf":
            return llguidance.LLMatcher.grammar_from_lark(_gbnf_as_lark(spec.source))
        schema = spec.source if spec.kind == "json_schema" else '{"type": "object"}'
        try:
            # Parsed here as well for a plain message on bad JSON (llguidance reports it at a column of its own
            # wrapping) and a clean refusal of nesting deep enough to exhaust the recursion.
            parsed = json.loads(schema)
        except RecursionError:
            raise ConstraintError("too_large", "the JSON schema is nested too deeply") from None
        except ValueError as exc:
            raise ConstraintError("invalid", f"the JSON schema is not valid JSON: {exc}") from None
        # llguidance applies the whitespace options to an object schema only; the boolean schemas are spelled out.
        if parsed is True:
            schema = "{}"
        elif parsed is False:
            raise ConstraintError("invalid", "the JSON schema false allows no value")
        elif not isinstance(parsed, dict):
            raise ConstraintError("invalid", "the JSON schema must be an object or a boolean")
        _refuse_lone_escapes(parsed, "the JSON schema")
        # Overrides win over the schema's own "x-guidance" settings, so the bound holds whatever the schema says.
        overrides = json_whitespace(spec.effective_max_whitespace)
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=overrides)
        except ValueError as exc:
            raise ConstraintError("invalid", str(exc)) from None

    def _refuse_inexact_numbers(self, schema: object, what: str) -> None:
        if inexact := inexact_number(schema, self.tokenizer, self.limits):
            raise ConstraintError("invalid", f"{what}'s number {inexact[0]} cannot be enforced exactly: "
                                             f"llguidance holds it as {inexact[1]}")


def _refuse_lone_escapes(schema: object, what: str) -> None:
    for pattern in schema_patterns(schema):
        if ends_in_lone_backslash(pattern):
            raise ConstraintError("invalid", f"{what}'s pattern {pattern!r} ends in a lone backslash (an escape of "
                                             "nothing)")


def _gbnf_as_lark(source: str) -> str:
    try:
        return gbnf_to_lark(source)
    except RecursionError:
        raise ConstraintError("too_large", "the GBNF grammar is nested too deeply") from None
    except Exception as exc:  # gbnf_to_lark raises its own error types (and ValueError, IndexError) on bad input
        raise ConstraintError("invalid", f"GBNF: {exc}") from None


def _raise_if_failed(matcher: llguidance.LLMatcher, kind: str) -> None:
    if matcher.is_error():
        message = matcher.get_error()
        raise ConstraintError(error_code(message), f"{kind}: {message}")


def _result(entry: CompiledGrammar | tuple[ConstraintErrorCode, str]) -> CompiledGrammar:
    if isinstance(entry, CompiledGrammar):
        return entry
    # A new exception each time: one instance raised on several threads would share one traceback.
    raise ConstraintError(*entry)
