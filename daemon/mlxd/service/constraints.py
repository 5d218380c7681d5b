"""A request's `constraint` message as a RowConstraint the engine follows, built on the preparation thread.

The grammar compiler (llguidance's token tables for the model's tokenizer: ~0.2-0.4 s for 49k tokens) is built
by the first request that needs one; compiled grammars are cached by content (constraints/compiler.py), so a
schema sent again costs a lookup and a matcher copy.
"""

from __future__ import annotations

import threading

from mlxd.constraints import CompiledGrammar, ConstraintError, ConstraintSpec, GrammarCompiler, RowConstraint
from mlxd.constraints.errors import as_request_error
from mlxd.errors import InvalidRequest
from mlxd.loading.tokenizer import Tokenizer
from mlxd_proto.v1 import inference_pb2 as pb


class Grammars:
    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: list[int],
                 mask_processes: int = 0) -> None:
        self._tokenizer, self._vocab_size, self._eos = tokenizer, vocab_size, eos_token_ids
        self._mask_processes = mask_processes
        self._compiler: GrammarCompiler | None = None
        self._lock = threading.Lock()

    def constraint(self, message: pb.Constraint) -> RowConstraint:
        """A fresh matcher for one request; INVALID_ARGUMENT or RESOURCE_EXHAUSTED naming what is wrong."""
        try:
            return RowConstraint(self._compile(spec_of(message)))
        except ConstraintError as error:
            raise as_request_error(error) from None

    def _compile(self, spec: ConstraintSpec) -> CompiledGrammar:
        with self._lock:  # one build however many requests arrive at once
            if self._compiler is None:
                self._compiler = GrammarCompiler(self._tokenizer.serialized, self._vocab_size, self._eos,
                                                 mask_processes=self._mask_processes)
        return self._compiler.compile(spec)


def spec_of(message: pb.Constraint) -> ConstraintSpec:
    kind = message.WhichOneof("kind")
    if kind is None:
        raise InvalidRequest("constraint: set one of json_schema, json_object, regex, lark or gbnf")
    source = "" if kind == "json_object" else getattr(message, kind)
    return ConstraintSpec(kind, source, max_whitespace=message.max_whitespace or None, after=message.after)
