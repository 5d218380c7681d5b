"""Constrained decoding under tensor parallelism: every rank applies the same grammar mask to the same logits.

How: rank 0 sends a constrained row's compiled grammar (llguidance's final JSON form, what its own matcher was
built from, `after` marker included) with the runner's open call, and each follower builds its own matcher from
it with the same tokenizer, vocabulary width and EOS ids. Building a matcher is deterministic given those, so
the follower's runner fills the same masks, and its matchers stay in step with rank 0's because each consumes
the tokens its own steps read, which replication.py already checks equal to rank 0's every step.

Why not send the filled masks each step instead: a mask row is vocab/32 words (19 KB for a 152k vocabulary),
per constrained row and step, and a follower would wait on that message before it could sample, where today
it samples on its own; and the runner fills masks on a thread while it queues the forward pass (engine/masks.py),
which a mask arriving from rank 0 after the step was queued could not overlap. Compiling costs a follower once
per grammar (cached by its key, as rank 0's compiler does), then nothing per step.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import llguidance

from mlxd.constraints import CompiledGrammar, GrammarCompiler, RowConstraint
from mlxd.constraints.compiler import CACHE_ENTRIES
from mlxd.engine.constraint import TokenConstraint
from mlxd.errors import Unsupported

log = logging.getLogger(__name__)


def encode_constraint(constraint: TokenConstraint) -> dict[str, Any]:
    """What a follower needs to build the same matcher (JSON-safe)."""
    if not isinstance(constraint, RowConstraint):
        raise Unsupported(f"a {type(constraint).__name__} constraint cannot be replicated across ranks")
    grammar = constraint.grammar
    return {"key": grammar.key, "kind": grammar.kind, "grammar": grammar.grammar, "width": grammar.width,
            "eos": list(grammar.eos_token_ids)}


class FollowerGrammars:
    """A follower's matchers for rank 0's constrained rows; the tokenizer's tables built by `prepare`, or at the
    first row."""

    def __init__(self, tokenizer_json: Callable[[], str], vocab_size: int) -> None:
        self._tokenizer_json, self._vocab_size = tokenizer_json, vocab_size
        self._compiler: GrammarCompiler | None = None
        self._compiled: OrderedDict[str, CompiledGrammar] = OrderedDict()

    def prepare(self, eos: list[int]) -> None:
        """Build the tokenizer's tables now, with the EOS ids rank 0's compiler has (as this rank reads them from
        the same model): built at the first constrained row instead, they held every rank's lockstep for their
        build (~0.3 s for 49k tokens, the GIL held), as rank 0's own did before it was built ahead of serving. Rows
        whose spec carries other EOS ids build them again. A tokenizer llguidance cannot take is logged: only a
        constrained row then fails."""
        try:
            self._compiler_for(eos)
        except Exception as error:
            log.warning("constraints: this rank's grammar compiler could not be built (%s)", error)

    def constraint(self, spec: dict[str, Any]) -> RowConstraint:
        compiler = self._compiler_for(spec["eos"])
        if compiler.width != spec["width"]:
            raise RuntimeError(f"rank 0's grammar masks {spec['width']} tokens, this rank's {compiler.width}")
        compiled = self._compiled.get(spec["key"])
        if compiled is None or compiled.grammar != spec["grammar"]:
            matcher = llguidance.LLMatcher(compiler.tokenizer, spec["grammar"], log_level=0, limits=compiler.limits)
            compiled = CompiledGrammar(spec["key"], spec["kind"], spec["grammar"], matcher, compiler.width,
                                       compiler.eos_token_ids, (), compiler.tokens)
            self._compiled[spec["key"]] = compiled
            while len(self._compiled) > CACHE_ENTRIES:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(spec["key"])
        return RowConstraint(compiled)

    def _compiler_for(self, eos: list[int]) -> GrammarCompiler:
        if self._compiler is None or list(self._compiler.eos_token_ids) != eos:
            self._compiler = GrammarCompiler(self._tokenizer_json(), self._vocab_size, eos)
        return self._compiler
