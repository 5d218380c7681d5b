"""A request's `constraint` message as a RowConstraint the engine follows, built on the preparation thread.

The grammar compiler (llguidance's token tables for the model's tokenizer: ~0.3 s for SmolLM2's 49k tokens, more
for larger vocabularies) is built before the daemon reports SERVING (`prepare`), with the mask processes started:
llguidance holds the GIL while it builds the tables, so a build at the first constrained request stalled every
stream being decoded, not only that request (docs/performance.md, session 48). Compiled grammars are cached by
content (constraints/compiler.py), so a schema sent again costs a lookup and a matcher copy.
"""

from __future__ import annotations

import logging
import threading
import time

from mlxd.constraints import ConstraintError, ConstraintSpec, GrammarCompiler, RowConstraint
from mlxd.constraints.errors import as_request_error
from mlxd.errors import InvalidRequest
from mlxd.loading.tokenizer import Tokenizer
from mlxd_proto.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)


class Grammars:
    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: list[int],
                 mask_processes: int = 0) -> None:
        self._tokenizer, self._vocab_size, self._eos = tokenizer, vocab_size, eos_token_ids
        self._mask_processes = mask_processes
        self._compiler: GrammarCompiler | None = None
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Build the compiler and start the mask processes now, before any request (see the top). A tokenizer
        llguidance cannot take is logged and left to each constrained request to report, as before."""
        started = time.perf_counter()
        try:
            self._compiler_now().mask_pool()
        except Exception as error:  # the daemon serves free requests whatever llguidance makes of the tokenizer
            log.warning("constraints: the grammar compiler could not be built (%s); constrained requests will "
                        "fail", error)
            return
        log.info("constraints: the tokenizer's token tables built in %.0f ms", (time.perf_counter() - started) * 1e3)

    def constraint(self, message: pb.Constraint) -> RowConstraint:
        """A fresh matcher for one request; INVALID_ARGUMENT or RESOURCE_EXHAUSTED naming what is wrong."""
        try:
            return RowConstraint(self._compiler_now().compile(spec_of(message)))
        except ConstraintError as error:
            raise as_request_error(error) from None

    def _compiler_now(self) -> GrammarCompiler:
        with self._lock:  # one build however many requests arrive at once
            if self._compiler is None:
                self._compiler = GrammarCompiler(self._tokenizer.serialized, self._vocab_size, self._eos,
                                                 mask_processes=self._mask_processes)
            return self._compiler


def spec_of(message: pb.Constraint) -> ConstraintSpec:
    kind = message.WhichOneof("kind")
    if kind is None:
        raise InvalidRequest("constraint: set one of json_schema, json_object, regex, lark or gbnf")
    source = "" if kind == "json_object" else getattr(message, kind)
    return ConstraintSpec(kind, source, max_whitespace=message.max_whitespace or None, after=message.after)
