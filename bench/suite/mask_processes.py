"""Rows' grammar masks filled in worker processes, for `bench mask_threads --warm` (llguidance's mask computation
does not run in parallel within one process: engine/masks.py). Each process builds its own tokenizer and the
matchers of its share of the rows, and fills their masks into one shared-memory array; a step sends each process
its rows' last tokens (consumed, then the next masks filled) and waits for every process's reply. What it measures
is whether this way would pay in the daemon: the fill's wall time including the pipes' round trips.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory

import llguidance
import numpy as np
from llguidance.numpy import fill_next_token_bitmask


def _serve(conn: Connection, memory: str, shape: tuple[int, int], rows: list[int], tokenizer_json: str,
           width: int, eos: list[int], grammar: str) -> None:
    """A worker: its rows' matchers; per message (one token or None per row), consume then fill, then reply."""
    tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=width, eos_token=eos)
    matchers = [llguidance.LLMatcher(tokenizer, grammar, log_level=0) for _ in rows]
    shared = SharedMemory(name=memory)
    try:
        masks: np.ndarray = np.ndarray(shape, dtype=np.int32, buffer=shared.buf)
        conn.send("ready")
        while (tokens := conn.recv()) is not None:
            for matcher, token in zip(matchers, tokens):
                if token is not None and not matcher.is_stopped() and not matcher.consume_token(token):
                    raise RuntimeError(f"the grammar refused token {token}")
            for matcher, row in zip(matchers, rows):
                fill_next_token_bitmask(matcher, masks[row:row + 1])
            conn.send(True)
    finally:
        del masks
        shared.close()


class MaskProcesses:
    """`processes` workers sharing `rows` rows of one grammar (row j in worker j % processes)."""

    def __init__(self, tokenizer_json: str, width: int, eos: list[int], grammar: str, words: int, rows: int,
                 processes: int) -> None:
        self._shared = SharedMemory(create=True, size=rows * words * 4)
        self.masks: np.ndarray = np.ndarray((rows, words), dtype=np.int32, buffer=self._shared.buf)
        self._shares = [list(range(k, rows, processes)) for k in range(processes)]
        context = mp.get_context("spawn")  # no fork of a process that may hold a GPU context
        self._conns, self._workers = [], []
        for share in self._shares:
            ours, theirs = context.Pipe()
            worker = context.Process(target=_serve, args=(theirs, self._shared.name, (rows, words), share,
                                                          tokenizer_json, width, eos, grammar), daemon=True)
            worker.start()
            self._conns.append(ours)
            self._workers.append(worker)
        for conn in self._conns:
            if conn.recv() != "ready":
                raise RuntimeError("a mask worker did not start")

    def step(self, tokens: list[int | None]) -> None:
        """Each row consumes its token (None: none yet), then every row's next mask is in `masks`."""
        for conn, share in zip(self._conns, self._shares):
            conn.send([tokens[j] for j in share])
        for conn in self._conns:
            conn.recv()

    def close(self) -> None:
        for conn in self._conns:
            conn.send(None)
        for worker in self._workers:
            worker.join(timeout=10)
        del self.masks
        self._shared.close()
        self._shared.unlink()
