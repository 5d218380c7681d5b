"""Structured output (issue 17): JSON Schema, JSON object, regex, Lark and GBNF constraints enforced token by token
with llguidance. spec.py says what a request asks, compiler.py turns it into a grammar for one model's tokenizer
(cached, bounded), matcher.py follows one request and fills its masks (models/ops.py mask_logits applies them)."""

from mlxd.constraints.compiler import MAX_SOURCE_BYTES, CompiledGrammar, GrammarCompiler
from mlxd.constraints.errors import ConstraintError
from mlxd.constraints.matcher import RowConstraint
from mlxd.constraints.spec import DEFAULT_MAX_WHITESPACE, ConstraintSpec

__all__ = [
    "DEFAULT_MAX_WHITESPACE",
    "MAX_SOURCE_BYTES",
    "CompiledGrammar",
    "ConstraintError",
    "ConstraintSpec",
    "GrammarCompiler",
    "RowConstraint",
]
