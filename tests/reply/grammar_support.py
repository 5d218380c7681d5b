"""A tokenizer with a format's markers as added tokens (the fixture's 320-token BPE plus them), its grammar
compiler, and a check of whether a text is accepted by a forced tool-call grammar."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tokenizers

from mlxd.constraints import CompiledGrammar, ConstraintError, ConstraintSpec, GrammarCompiler, RowConstraint
from mlxd.reply import ReplyFormat

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "parity" / "llama" / "tokenizer.json"


@dataclass
class Model:
    """A tiny model's tokenizer side: encodes text with its markers as single tokens, compiles grammars."""

    fmt: ReplyFormat
    tokenizer: tokenizers.Tokenizer
    compiler: GrammarCompiler

    def compile(self, grammar: str, after: str = "") -> CompiledGrammar:
        return self.compiler.compile(ConstraintSpec("lark", grammar, after=after))

    def accepts(self, grammar: CompiledGrammar, text: str) -> bool:
        """Whether every token of `text` is allowed and the grammar may end after it."""
        row = RowConstraint(grammar)
        for token in self.tokenizer.encode(text, add_special_tokens=False).ids:
            try:
                row.consume(token)
            except ConstraintError:
                return False
        return row.is_accepting()


def model(name: str, markers: list[str], end: str) -> Model:
    """A tokenizer holding `markers` and the end-of-turn token `end` as special tokens, and format `name` with
    the ids of those markers."""
    tokenizer = tokenizers.Tokenizer.from_file(str(FIXTURE))
    tokenizer.add_special_tokens([*markers, end])
    ids = tuple((marker, tokenizer.token_to_id(marker)) for marker in markers)
    width = tokenizer.get_vocab_size(with_added_tokens=True)
    compiler = GrammarCompiler(tokenizer.to_str(), width, [tokenizer.token_to_id(end)])
    return Model(ReplyFormat(name, ids), tokenizer, compiler)
