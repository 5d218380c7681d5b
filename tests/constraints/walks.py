"""Walking a constraint token by token as a sampler would: fill the mask, check what it allows, pick a token."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np

from mlxd.constraints import CompiledGrammar, ConstraintSpec, GrammarCompiler, RowConstraint

Chooser = Callable[[np.ndarray], int]


def allowed_ids(mask_row: np.ndarray) -> np.ndarray:
    """The token ids whose bits are set in an int32 mask row (bit i of word w is id 32*w + i)."""
    bits = (mask_row.astype(np.int64)[:, None] >> np.arange(32)) & 1
    return np.flatnonzero(bits.reshape(-1))


class Walk:
    """One walk's result: the tokens taken (EOS excluded), their text, and whether the grammar finished."""

    def __init__(self, tokens: list[int], text: str, finished: bool) -> None:
        self.tokens = tokens
        self.text = text
        self.finished = finished


def walk(compiler: GrammarCompiler, grammar: CompiledGrammar, choose: Chooser, tokenizer_tokens: int,
         max_steps: int = 400) -> Walk:
    """Fills and checks the mask at every step: never an id past the tokenizer (padded logits), never an empty mask,
    EOS exactly when the grammar accepts, only EOS once it is stopped. Stops at EOS or a stopped grammar."""
    row = RowConstraint(grammar)
    # Prefilled with ones: every bit, padding included, must be written by the fill.
    out = np.full(grammar.mask_words, -1, dtype=np.int32)
    eos = set(grammar.eos_token_ids)
    tokens: list[int] = []
    for _ in range(max_steps):
        row.fill_bitmask(out)
        ids = allowed_ids(out)
        assert ids.size, "the mask allows nothing"
        assert ids.max() < tokenizer_tokens, f"padded ids allowed: {ids[ids >= tokenizer_tokens][:8]}"
        eos_allowed = bool(eos & set(ids.tolist()))
        assert eos_allowed == row.is_accepting(), (eos_allowed, row.is_accepting(), tokens)
        if row.is_stopped():
            assert set(ids.tolist()) <= eos, "a stopped grammar allows more than EOS"
            return Walk(tokens, compiler.tokenizer.decode_str(tokens), True)
        choice = choose(ids)
        assert choice in set(ids.tolist())
        row.consume(choice)
        if choice in eos:
            assert row.is_stopped()
            return Walk(tokens, compiler.tokenizer.decode_str(tokens), True)
        tokens.append(choice)
    return Walk(tokens, compiler.tokenizer.decode_str(tokens), False)


def lowest(ids: np.ndarray) -> int:
    """Greedy on a flat distribution: the lowest allowed id (EOS, a low id, whenever it is allowed)."""
    return int(ids[0])


def closing_tokens(compiler: GrammarCompiler, closers: str) -> frozenset[int]:
    """Token ids whose text is made only of `closers` characters: what ends a string, an item or a structure."""
    found = set()
    for token in range(compiler.width):
        text = compiler.tokenizer.decode_str([token]) if not compiler.tokenizer.is_special_token(token) else ""
        if text and all(c in closers for c in text):
            found.add(token)
    return frozenset(found)


def seeded(seed: int, eos_ids: Sequence[int], closers: frozenset[int] = frozenset(), stop: float = 0.5,
           close: float = 0.3) -> Chooser:
    """Random allowed tokens from `seed`; EOS with probability `stop` where allowed and a closing token with
    probability `close`, so that walks through unbounded grammars end in a few dozen tokens."""
    rng = random.Random(seed)
    eos = set(eos_ids)

    def choose(ids: np.ndarray) -> int:
        listed = ids.tolist()
        ending = [i for i in listed if i in eos]
        if ending and rng.random() < stop:
            return rng.choice(ending)
        others = [i for i in listed if i not in eos] or ending
        closing = [i for i in others if i in closers]
        if closing and rng.random() < close:
            return rng.choice(closing)
        return rng.choice(others)

    return choose


def whitespace_run(compiler: GrammarCompiler, tokenizer_tokens: int, grammar: CompiledGrammar, prefix: str) -> int:
    """After `prefix`, follows every run of whitespace-only tokens the masks allow (one path per run length) and
    returns the longest run in characters."""
    whitespace: dict[int, int] = {}
    for token in range(tokenizer_tokens):
        text = compiler.tokenizer.decode_str([token])
        if text and not compiler.tokenizer.is_special_token(token) and not text.strip(" \t\n\r"):
            whitespace[token] = len(text)
    prefix_tokens = compiler.tokenizer.tokenize_str(prefix)
    paths: dict[int, list[int]] = {0: []}
    frontier = [0]
    out = np.zeros(grammar.mask_words, dtype=np.int32)
    while frontier:
        run = frontier.pop()
        row = RowConstraint(grammar)
        for token in prefix_tokens + paths[run]:
            row.consume(token)
        row.fill_bitmask(out)
        for token in set(allowed_ids(out).tolist()) & whitespace.keys():
            longer = run + whitespace[token]
            if longer not in paths:
                paths[longer] = paths[run] + [token]
                frontier.append(longer)
    return max(paths)


def compile_spec(compiler: GrammarCompiler, kind: str, source: str = "", **settings: int | None) -> CompiledGrammar:
    return compiler.compile(ConstraintSpec(kind, source, **settings))  # type: ignore[arg-type]


def finished_seeded_walk(compiler: GrammarCompiler, grammar: CompiledGrammar, seed: int, closers: str,
                         tokenizer_tokens: int, max_steps: int = 400) -> str:
    """The text of a `seeded` walk that closes with tokens made of `closers` characters; it must finish."""
    chooser = seeded(seed, grammar.eos_token_ids, closing_tokens(compiler, closers))
    result = walk(compiler, grammar, chooser, tokenizer_tokens, max_steps=max_steps)
    assert result.finished, result.text
    return result.text


# JSON Schemas the walks and the matcher's tests take: each keyword family llguidance compiles.
SCHEMAS = {
    "bounded_object": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "nested_ref": {
        "type": "object",
        "properties": {"user": {"$ref": "#/$defs/user"}, "active": {"type": "boolean"}},
        "required": ["user"],
        "additionalProperties": False,
        "$defs": {"user": {"type": "object", "properties": {
            "id": {"type": "integer", "minimum": 1, "maximum": 9999},
            "role": {"enum": ["admin", "guest", None]},
        }, "required": ["id", "role"], "additionalProperties": False}},
    },
    "any_of": {"anyOf": [{"type": "integer", "minimum": -5, "maximum": 5}, {"type": "string", "maxLength": 4},
                         {"type": "null"}, {"const": [1, "two"]}]},
    "array_bounds": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                     "minItems": 2, "maxItems": 4},
    "number_range": {"type": "object", "properties": {"x": {"type": "number", "minimum": 0.5, "maximum": 2}},
                     "required": ["x"], "additionalProperties": False},
    "string_formats": {"type": "object", "properties": {
        "ip": {"type": "string", "format": "ipv4"}, "id": {"type": "string", "format": "uuid"},
        "mail": {"type": "string", "format": "email", "maxLength": 12},
        "code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"},
    }, "required": ["ip", "id", "mail", "code"], "additionalProperties": False},
    "optional_fields": {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}},
                        "additionalProperties": False},
    "open_object": {"type": "object", "properties": {"k": {"type": "integer"}}, "required": ["k"]},
    "any_value": True,
}
