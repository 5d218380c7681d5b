"""A mask process (`python -m mlxd.constraints.mask_worker FD`): replicas of some rows' llguidance matchers, told
the rows' tokens and filling their masks on request, for constraints/mask_pool.py.

llguidance computes one process's masks one at a time whatever the threads (constraints/matcher.py
fill_bitmasks), and a batch's masks take longer than a GPU's forward launch; rows spread over processes fill in
parallel. This module imports llguidance, NumPy and the constraints package (no MLX): a process starts in a
fraction of a second and holds no device. It ends when its pipe closes (the daemon exited or closed the pool).

Messages (multiprocessing.connection, one reply each, in order):
  ("start", tokenizer_json, width, eos_ids, limits)  -> ("ready", None | error)
  ("create", [(row, key, grammar, tokens)], drops)   -> ("created", [(row, None | error)])
  ("fill", [(row, rollback, tokens)], drops)         -> the masks as bytes, then the pickled failures where any
A fill's rows are rolled back, told their new tokens, then their masks written in the order asked. Its answer is
one message, the masks (int32 [rows, words]) followed, only where a row failed, by the pickled list of each row's
None | (code, error): a read and no unpickling a step in the daemon's mask thread, whose Python holds the GIL the
worker launches with.
"""

from __future__ import annotations

import pickle
import sys
from collections import OrderedDict
from multiprocessing.connection import Connection
from typing import Any

import llguidance
import numpy as np
from llguidance.numpy import fill_next_token_bitmask

from mlxd.constraints.compiler import mask_words  # loaded with the package anyway (constraints/__init__.py)

# Grammars' prototypes kept (a row's replica is a copy of its grammar's): as many as the compiler caches.
PROTOTYPES = 64


class Replicas:
    def __init__(self, tokenizer_json: str, width: int, eos: list[int], limits: dict[str, Any]) -> None:
        self._tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=width, eos_token=eos or None)
        self._limits = llguidance.LLParserLimits(**limits)
        self._words = mask_words(width)
        self._prototypes: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._rows: dict[int, llguidance.LLMatcher] = {}

    def create(self, row: int, key: str, grammar: str, tokens: list[int]) -> str | None:
        prototype = self._prototypes.get(key)
        if prototype is None:
            prototype = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0,
                                             limits=self._limits)
            # Its first mask builds the lexer states every row needs at its start; copies made after it begin
            # with them (as the compiler's prototype does in the daemon).
            fill_next_token_bitmask(prototype, np.zeros((1, self._words), dtype=np.int32))
            if prototype.is_error():
                return prototype.get_error()
            self._prototypes[key] = prototype
            while len(self._prototypes) > PROTOTYPES:
                self._prototypes.popitem(last=False)
        self._prototypes.move_to_end(key)
        matcher = prototype.deep_copy()
        for token in tokens:
            if not matcher.consume_token(token):
                return matcher.get_error() or f"the replica refused token {token}"
        self._rows[row] = matcher
        return None

    def drop(self, rows: list[int]) -> None:
        for row in rows:
            self._rows.pop(row, None)

    def fill(self, jobs: list[tuple[int, int, list[int]]]) -> tuple[list[tuple[str, str] | None], np.ndarray]:
        """Each job's row rolled back, told its tokens, its mask filled: (failures, masks [len(jobs), words])."""
        masks = np.zeros((len(jobs), self._words), dtype=np.int32)
        failures: list[tuple[str, str] | None] = []
        for j, (row, rollback, tokens) in enumerate(jobs):
            matcher = self._rows.get(row)
            if matcher is None:
                failures.append(("lost", f"row {row} has no replica here"))
                continue
            if rollback and not matcher.rollback(rollback):
                failures.append(("rejected", matcher.get_error() or f"cannot roll back {rollback} tokens"))
                continue
            refused = next((t for t in tokens if not matcher.consume_token(t)), None)
            if refused is not None:
                failures.append(("rejected", matcher.get_error() or f"token {refused} was refused"))
                continue
            fill_next_token_bitmask(matcher, masks[j:j + 1])
            failures.append(("failed", matcher.get_error()) if matcher.is_error() else None)
        return failures, masks


def serve(conn: Connection) -> None:
    try:
        _serve(conn)
    except (EOFError, OSError):  # the daemon exited or closed the pool
        pass


def _serve(conn: Connection) -> None:
    kind, tokenizer_json, width, eos, limits = conn.recv()
    try:
        replicas = Replicas(tokenizer_json, width, eos, limits)
    except Exception as error:  # the parent fills every row itself
        conn.send(("ready", f"{type(error).__name__}: {error}"))
        return
    conn.send(("ready", None))
    while True:
        kind, work, drops = conn.recv()
        replicas.drop(drops)
        if kind == "create":
            conn.send(("created", [(row, replicas.create(row, key, grammar, tokens))
                                   for row, key, grammar, tokens in work]))
        elif kind == "fill":
            failures, masks = replicas.fill(work)
            if any(failures):
                conn.send_bytes(masks.tobytes() + pickle.dumps(failures))
            else:
                conn.send_bytes(masks.data)


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
