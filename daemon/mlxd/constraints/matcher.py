"""One request's constraint state (the CPU side: mask filling, token consumption); models/ops.py mask_logits
turns the filled masks into -inf logits."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import llguidance
import numpy as np
from llguidance.numpy import fill_next_token_bitmask, fill_next_token_bitmask_par

from mlxd.constraints.compiler import CompiledGrammar, error_code
from mlxd.constraints.errors import ConstraintError

_row_ids = itertools.count()


class RowConstraint:
    """One llguidance matcher for one request, created at the grammar's start. Use it from one thread at a time
    (the worker); the grammar it came from may be shared."""

    def __init__(self, grammar: CompiledGrammar) -> None:
        self.grammar = grammar
        self.mask_words = grammar.mask_words  # the width of the row fill_bitmask writes
        self.vocabulary = grammar.tokens  # ids 0 .. vocabulary-1 may be allowed, no other
        self._matcher = grammar.new_matcher()
        self.row_id = next(_row_ids)
        self.tokens: list[int] = []  # consumed and not rolled back: what a replica in a mask process replays
        self._low = 0  # the fewest tokens held since the last catch_up (rollbacks go below what a replica saw)

    @property
    def grammar_key(self) -> str:
        return self.grammar.key

    @property
    def grammar_text(self) -> str:
        return self.grammar.grammar

    def catch_up(self, consumed: int) -> tuple[int, list[int]]:
        """For a replica of this matcher that had consumed the first `consumed` of the tokens as they stood at the
        last catch_up (constraints/mask_pool.py): how many it must roll back, then the tokens it must consume."""
        common = min(consumed, self._low)
        self._low = len(self.tokens)
        return consumed - common, self.tokens[common:]

    def fill_bitmask(self, out: np.ndarray) -> None:
        """Writes the allowed next tokens into `out`, an int32 row of grammar.mask_words words (bit i of word w is
        token 32*w + i), in place and without the GIL, so the device's forward pass and other Python threads go on
        meanwhile. ConstraintError when the matcher fails: "too_large" where a per-token limit was hit."""
        if out.dtype != np.int32 or out.shape[-1] != self.grammar.mask_words or out.size != self.grammar.mask_words:
            raise ValueError(f"the mask row must be int32 of {self.grammar.mask_words} words, "
                             f"not {out.dtype} {out.shape}")
        if not out.flags["C_CONTIGUOUS"]:
            raise ValueError("the mask row must be contiguous: llguidance writes it through a pointer")
        # llguidance's helper takes a 2-D array; a new axis on a contiguous row is a view of the same memory.
        fill_next_token_bitmask(self._matcher, out.reshape(1, -1) if out.ndim == 1 else out)
        self._raise_if_failed()

    def consume(self, token: int) -> None:
        """Advances past the sampled `token`. ConstraintError("rejected") if the grammar refuses it: a token the
        mask forbade, or a bug. The matcher stays failed afterwards."""
        if not self._matcher.consume_token(token):
            raise self._refused(f"token {token} was refused")
        self.tokens.append(token)

    def is_stopped(self) -> bool:
        """The grammar is complete and allows nothing but EOS: the engine ends the sequence (STOP)."""
        return self._matcher.is_stopped()

    def is_accepting(self) -> bool:
        """The output so far is complete under the grammar (EOS is allowed here), whether or not it could go on."""
        return self._matcher.is_accepting()

    def rollback(self, tokens: int) -> None:
        """Undoes the last `tokens` consumed ones (speculative decoding's rejected drafts). ConstraintError
        ("rejected") when there are fewer to undo; the matcher stays failed afterwards."""
        if tokens < 0:
            raise ValueError(f"cannot roll back {tokens} tokens")
        if tokens and not self._matcher.rollback(tokens):
            raise self._refused(f"cannot roll back {tokens} tokens")
        if tokens:
            del self.tokens[-tokens:]
            self._low = min(self._low, len(self.tokens))

    def _raise_if_failed(self) -> None:
        failure = self.failure()
        if failure is not None:
            raise failure

    def failure(self) -> ConstraintError | None:
        """Why the matcher failed, or None while it has not: "too_large" where a per-token limit was hit, else
        "invalid": a grammar that cannot say what may follow is the request's constraint at fault (the fuzzer's
        schema whose $ref names itself compiled, then failed its sixth mask with NoExtensionBias)."""
        if not self._matcher.is_error():
            return None
        message = self._matcher.get_error()
        return ConstraintError(error_code(message), message)

    def _refused(self, message: str) -> ConstraintError:
        """A token or a rollback the matcher refused: "rejected" (the mask should have made it impossible, a
        bug), unless a limit was hit on the way."""
        failure = self.failure()
        if failure is not None and failure.code == "too_large":
            return failure
        return ConstraintError("rejected", failure.message if failure is not None else message)


def fill_bitmasks(rows: Sequence[RowConstraint], out: np.ndarray) -> list[ConstraintError | None]:
    """Row j of `out` (int32 [len(rows), words], contiguous; words each row's mask_words) filled as rows[j]'s
    fill_bitmask would, in one call on llguidance's threads, without the GIL. Returns each row's failure, None
    where it filled.

    The call was meant to fill a batch's masks in about one mask's time; measured, it does not (llguidance 1.9.1,
    `bench mask_threads`): 16 copies of one matcher at one state take 1.43 ms on one of the executor's threads and
    1.95 on four on the H200's host, with the CPU time no more than the wall time; copies of one matcher do not
    fill in parallel, whatever the threads (two Python threads each filling 8 copies' masks through
    `fill_bitmask`, which releases the GIL, took 3.9 ms on 2 cores where one thread took 2.8). Kept: one call
    into llguidance a step, and the GIL free throughout."""
    if not rows:
        return []
    words = rows[0].mask_words
    if out.dtype != np.int32 or out.shape != (len(rows), words) or not out.flags["C_CONTIGUOUS"]:
        raise ValueError(f"the masks must be contiguous int32 [{len(rows)}, {words}], not {out.dtype} {out.shape}")
    if any(row.mask_words != words for row in rows):
        raise ValueError("the rows' masks differ in width")
    pool = rows[0].grammar.pool
    if pool is not None and all(row.grammar.pool is pool for row in rows):
        return pool.fill(rows, out, functools.partial(_fill_here, rows, out))
    return list(_fill_here(rows, out, range(len(rows))).values())


def _fill_here(rows: Sequence[RowConstraint], out: np.ndarray,
               indices: Sequence[int]) -> dict[int, ConstraintError | None]:
    """rows[j]'s mask into out[j] for each j of `indices`, in this process: their failures by j."""
    if not indices:
        return {}
    fill_next_token_bitmask_par(_executor(), [(rows[j]._matcher, j) for j in indices], out)
    return {j: rows[j].failure() for j in indices}


@functools.cache
def _executor() -> llguidance.LLExecutor:
    """llguidance's executor for batched mask fills, made on first use, with one thread: its threads do not fill
    in parallel (fill_bitmasks), and on the H200's host (16 cores) 16 rows' masks at one state took 1.43 ms on one
    thread against 1.95 on four (`bench mask_threads`, session 21). With one thread, 16 constrained streams over
    gRPC (random 1B) kept 0.74 of the free rate and free streams beside them 0.91, against 0.68 and 0.85 with four
    earlier the same session (two machines: a hint, not a measure). One thread still fills without the GIL."""
    return llguidance.LLExecutor(num_threads=1)
