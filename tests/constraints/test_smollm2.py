"""The same checks with SmolLM2-135M's 49k tokenizer (GGUF), whose vocabulary has multi-space and multi-newline
tokens, byte-fallback pieces and two end-of-generation ids."""

from __future__ import annotations

import json
import re

import pytest

from mlxd.constraints import ConstraintSpec
from tests.constraints.test_walks import (
    GBNF_JSON,
    GBNF_LIST,
    JSON_CLOSERS,
    LARK,
    LARK_TEXT,
    REGEXES,
    SCHEMAS,
    _check_json,
)
from tests.constraints.walks import closing_tokens, compile_spec, lowest, seeded, walk, whitespace_run

pytestmark = pytest.mark.real_model

SEEDS = range(4)


@pytest.fixture(scope="module")
def smol(smollm2_compiler):
    return smollm2_compiler


@pytest.fixture(scope="module")
def json_closers(smol):
    return closing_tokens(smol, JSON_CLOSERS)


def test_the_mask_covers_the_logits(smol):
    assert smol.width == 49152 and smol.mask_words == 1536
    assert set(smol.eos_token_ids) == {0, 2}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_walks_make_valid_json(smol, json_closers, name):
    grammar = compile_spec(smol, "json_schema", json.dumps(SCHEMAS[name]))
    for seed in SEEDS:
        result = walk(smol, grammar, seeded(seed, smol.eos_token_ids, json_closers), smol.width)
        assert result.finished, result.text
        _check_json(result.text, SCHEMAS[name])


@pytest.mark.parametrize("pattern", REGEXES)
def test_regex_walks_match(smol, pattern):
    grammar = compile_spec(smol, "regex", pattern)
    for choose in [lowest, *(seeded(seed, smol.eos_token_ids) for seed in SEEDS)]:
        result = walk(smol, grammar, choose, smol.width)
        assert result.finished and re.fullmatch(pattern, result.text), result.text


def test_grammar_walks_match(smol):
    lark, gbnf_list, gbnf_json = (compile_spec(smol, kind, source) for kind, source in
                                  [("lark", LARK), ("gbnf", GBNF_LIST), ("gbnf", GBNF_JSON)])
    for seed in SEEDS:
        result = walk(smol, lark, seeded(seed, smol.eos_token_ids, closing_tokens(smol, ")")), smol.width)
        assert result.finished and LARK_TEXT.fullmatch(result.text), result.text
        result = walk(smol, gbnf_list, seeded(seed, smol.eos_token_ids, closing_tokens(smol, "\n")), smol.width)
        assert result.finished and re.fullmatch(r"(?:- [^\r\n\x0b\x0c\x85\u2028\u2029]+\n)+", result.text)
        result = walk(smol, gbnf_json, seeded(seed, smol.eos_token_ids, closing_tokens(smol, JSON_CLOSERS)),
                      smol.width, max_steps=1000)
        assert result.finished and isinstance(json.loads(result.text), dict), result.text


@pytest.mark.parametrize("bound", [None, 0, 5])
def test_whitespace_tokens_of_many_blanks_respect_the_bound(smol, bound):
    grammar = smol.compile(ConstraintSpec("json_object", max_whitespace=bound))
    assert whitespace_run(smol, smol.width, grammar, "{") == (8 if bound is None else bound)
