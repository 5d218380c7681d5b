"""Constrained rows' masks filled in worker processes (`serve --mask-processes N`), in parallel.

Why: llguidance fills one process's masks one at a time whatever the threads (constraints/matcher.py
fill_bitmasks); on an H200 16 rows' masks took 3.6 ms against the forward launch's 3.1 ms, so the step waited
(engine/runner.py _constrained_step). Rows spread over N processes fill in about 1/N of that.

How: each row's matcher stays here, the one the engine consumes, rolls back and asks whether it is complete; a
process holds a replica of it (constraints/mask_worker.py) used only to fill masks. Each fill sends a row's
replica what it missed (a rollback, then the tokens since: RowConstraint.catch_up) and gets the mask back as
bytes. A replica is made in the background: until its process says it is ready, and whenever that process is
busy making others, the row is filled here as before, so a new grammar's compile in a process stalls no step.
A process that dies or stalls takes its replicas with it: their rows are filled here, and a new process takes its
place after a back-off (1 s, doubling with each loss of that place, at most RESTARTS times).
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import llguidance
import numpy as np

from mlxd.constraints.compiler import error_code, mask_words
from mlxd.constraints.errors import ConstraintError

log = logging.getLogger(__name__)

# A fill's answer later than this means a process stalled (a fill is bounded by llguidance's per-token fuel: ~4 ms a
# row at most): it is killed and its rows are filled here, so one stuck process holds the batch up only this long.
ANSWER_SECONDS = 2.0

# A lost process is replaced after RESTART_SECONDS * 2 ** (losses - 1), at most RESTARTS times per place: a process
# that keeps dying (a grammar that crashes llguidance, say) leaves its place to this process in the end.
RESTART_SECONDS = 1.0
RESTARTS = 5

# `serve --mask-processes auto`: this many processes on a GPU host with AUTO_MIN_CORES cores or more, none elsewhere.
# Measured (docs/performance.md, session 23): on an H200's 16-core host 3 processes took 16 rows' fill from 3.6 to
# 2.0 ms, constrained / free 0.876 -> 0.994 at 1 stream and 0.811 -> 0.841 at 16; on a 2-core CPU host (the forward
# pass itself on those cores) processes were slower than the worker's thread alone (3.45 against 3.27 ms).
AUTO = -1
AUTO_PROCESSES = 3
AUTO_MIN_CORES = 8


def processes_for(requested: int, device: str, cores: int | None) -> int:
    """The mask processes to start: `requested`, or for AUTO what the host suits (see AUTO_PROCESSES)."""
    if requested != AUTO:
        return requested
    return AUTO_PROCESSES if "gpu" in device.lower() and (cores or 0) >= AUTO_MIN_CORES else 0


# Whether this process fills a share of the rows too (as one more process) while mask processes are live. On the
# H200 (session 26, `bench batch_inprocess --fills`) a fill keeping a core busy beside the worker's forward launch
# cost the step far more than its own time, and the masks in processes beat the worker's own fill (0.89 against 0.70
# of free streams at 16): False leaves every row to the processes (the worker's thread then only sends and reads),
# for the next GPU run to compare (`--variant nolocal:mlxd.constraints.mask_pool.KEEP_A_SHARE=False`).
KEEP_A_SHARE = True

LIMIT_FIELDS = ("initial_lexer_fuel", "step_lexer_fuel", "max_lexer_states", "max_grammar_size", "max_items_in_row",
                "step_max_items", "precompute_large_lexemes", "verbose_errors")


class PooledRow(Protocol):
    """What the pool needs of a row's constraint (constraints/matcher.py RowConstraint)."""

    row_id: int
    tokens: list[int]

    @property
    def grammar_key(self) -> str: ...

    @property
    def grammar_text(self) -> str: ...

    def catch_up(self, consumed: int) -> tuple[int, list[int]]: ...


@dataclass
class _Replica:
    process: _Process
    length: int = 0        # tokens the replica has consumed
    ready: bool = False


@dataclass(eq=False)  # compared and hashed by identity
class _Process:
    conn: Connection
    sock: socket.socket             # the same socket (its own descriptor): a fill's answer read in one call
    popen: subprocess.Popen[bytes]
    waiting: str | None = "ready"   # the reply it owes: "ready", "created", or None (idle)
    dead: bool = False
    losses: int = 0                 # processes lost in this place before this one
    lost_at: float = 0.0
    replicas: int = 0
    drops: list[int] = field(default_factory=list)   # replicas to forget, sent with its next message
    creating: list[PooledRow] = field(default_factory=list)  # replicas to make once the step's fill is read


class MaskPool:
    """`processes` mask processes for one tokenizer (`width` mask bits); fill() is called from one thread."""

    def __init__(self, tokenizer_json: str, width: int, eos_token_ids: Sequence[int],
                 limits: llguidance.LLParserLimits, processes: int) -> None:
        self.words = mask_words(width)
        self._replicas: dict[int, _Replica] = {}
        self._local: set[int] = set()   # rows filled in this process: it takes a share as one more process
        self.filled_in_processes = 0    # masks the processes filled (for tests and benchmarks)
        self.answer_seconds = ANSWER_SECONDS
        self._dropped: collections.deque[int] = collections.deque()  # ids of rows collected, from any thread
        limit_values = {name: getattr(limits, name) for name in LIMIT_FIELDS}
        self._start = ("start", tokenizer_json, width, list(eos_token_ids), limit_values)
        self.restart_seconds = RESTART_SECONDS
        self._processes = [_spawn(self._start) for _ in range(processes)]
        self._closer = weakref.finalize(self, _close, self._processes)  # the list as it is then: replacements too
        log.info("constrained rows' masks are filled in %d processes", processes)

    def fill(self, rows: Sequence[PooledRow], out: np.ndarray,
             fill_here: Callable[[list[int]], dict[int, ConstraintError | None]]) -> list[ConstraintError | None]:
        """Row j's mask into out[j] (int32 [len(rows), words]): in its replica's process where that is ready and
        idle, the others by fill_here(indices) here meanwhile. Returns each row's failure (None where it filled)."""
        self._replace_lost()
        self._collect_replies()
        self._forget_dropped()
        sent: dict[_Process, list[int]] = {}   # the rows (indices into `rows`) each process fills
        here: list[int] = []
        for j, row in enumerate(rows):
            replica = self._replicas.get(row.row_id)
            if row.row_id in self._local:
                here.append(j)
            elif replica is None:
                self._plan_replica(row)
                here.append(j)
            elif replica.ready and replica.process.waiting is None and not replica.process.dead:
                sent.setdefault(replica.process, []).append(j)
            else:
                here.append(j)
        for process, indices in list(sent.items()):
            if not self._send_fill(process, [rows[j] for j in indices]):
                here.extend(sent.pop(process))
        failures: list[ConstraintError | None] = [None] * len(rows)
        for j, failure in fill_here(here).items():
            failures[j] = failure
        again: list[int] = []
        for process, indices in sent.items():
            again.extend(self._read_fill(process, [rows[j] for j in indices], indices, out, failures))
        for j, failure in fill_here(again).items():  # rows whose process failed them: filled here after all
            failures[j] = failure
        self._send_creates()
        return failures

    def close(self) -> None:
        self._closer()

    def process_ids(self) -> list[int]:
        """The live mask processes' ids."""
        return [p.popen.pid for p in self._processes if not p.dead]

    # -- replicas --------------------------------------------------------------------------------------------------

    def _replace_lost(self) -> None:
        now = time.monotonic()
        for k, process in enumerate(self._processes):
            if (process.dead and process.losses < RESTARTS
                    and now - process.lost_at >= self.restart_seconds * 2 ** process.losses):
                self._processes[k] = _spawn(self._start, process.losses + 1)
                log.info("a mask process replaces a lost one (%d lost in its place)", process.losses + 1)

    def _plan_replica(self, row: PooledRow) -> None:
        """A replica for `row` in the least loaded live process, made after this step's fill; or none, the row
        filled here, where this process holds fewer rows than any other."""
        weakref.finalize(row, self._dropped.append, row.row_id)
        live = [p for p in self._processes if not p.dead]
        if not live or (KEEP_A_SHARE and len(self._local) <= min(p.replicas for p in live)):
            self._local.add(row.row_id)
            return
        process = min(live, key=lambda p: p.replicas)
        process.replicas += 1
        process.creating.append(row)
        self._replicas[row.row_id] = _Replica(process)

    def _forget_dropped(self) -> None:
        while self._dropped:
            row_id = self._dropped.popleft()
            self._local.discard(row_id)
            replica = self._replicas.pop(row_id, None)
            if replica is not None:
                replica.process.replicas -= 1
                replica.process.drops.append(row_id)

    def _send_creates(self) -> None:
        for process in self._processes:
            if process.dead or process.waiting is not None or not process.creating:
                continue
            work = []
            for row in process.creating:
                replica = self._replicas.get(row.row_id)
                if replica is None or replica.process is not process:
                    continue
                rollback, tokens = row.catch_up(0)
                replica.length = len(tokens)
                work.append((row.row_id, row.grammar_key, row.grammar_text, tokens))
            process.creating = []
            if work and self._send(process, ("create", work, _take(process.drops))):
                process.waiting = "created"

    def _collect_replies(self) -> None:
        """Read the start and create replies that have come (without waiting for any)."""
        for process in self._processes:
            if process.dead or process.waiting is None or not _ready(process):
                continue
            try:
                kind, body = process.conn.recv()
            except (EOFError, OSError):
                self._lose(process, "it exited")
                continue
            process.waiting = None
            if kind == "ready" and body is not None:
                self._lose(process, body)
            elif kind == "created":
                for row_id, error in body:
                    replica = self._replicas.get(row_id)
                    if replica is None:
                        continue  # the row ended while its replica was made: its drop is on the way
                    if error is None:
                        replica.ready = True
                    else:  # its grammar did not build there: the row stays filled here
                        log.warning("a mask process could not replicate row %d: %s", row_id, error)

    # -- one fill --------------------------------------------------------------------------------------------------

    def _send_fill(self, process: _Process, rows: list[PooledRow]) -> bool:
        work = []
        for row in rows:
            replica = self._replicas[row.row_id]
            rollback, tokens = row.catch_up(replica.length)
            replica.length = len(row.tokens)
            work.append((row.row_id, rollback, tokens))
        return self._send(process, ("fill", work, _take(process.drops)))

    def _read_fill(self, process: _Process, rows: list[PooledRow], indices: list[int], out: np.ndarray,
                   failures: list[ConstraintError | None]) -> list[int]:
        """The process's masks into out; returns the indices to fill here instead (their replicas are gone)."""
        size = len(rows) * self.words * 4   # the masks' bytes; pickled failures follow where a row failed
        try:
            answer = self._receive(process, size)
            masks = np.frombuffer(answer, dtype=np.int32, count=size // 4).reshape(len(rows), self.words)
            outcomes = pickle.loads(answer[size:]) if len(answer) > size else [None] * len(rows)
        except (EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
            self._lose(process, f"it did not answer a fill ({error})")
            return indices
        out[indices] = masks[:, :out.shape[1]]
        self.filled_in_processes += len(indices)
        again = []
        for j, row, outcome in zip(indices, rows, outcomes):
            if outcome is None:
                continue
            code, message = outcome
            if code == "failed":  # the grammar itself failed at this mask: the row's failure, as here
                failures[j] = ConstraintError(error_code(message), message)
            else:  # the replica lost step with the row (a bug): forget it, fill the row here
                log.warning("a mask process's replica of row %d failed (%s): %s", row.row_id, code, message)
                replica = self._replicas.pop(row.row_id)
                replica.process.replicas -= 1
                again.append(j)
        return again

    def _receive(self, process: _Process, size: int) -> memoryview:
        """A fill's answer (Connection's framing: a 4-byte length, then the bytes), at least `size` bytes long. Read
        in one call that waits for all of them without the GIL, where Connection's poll, then its reads of the
        length and of the bytes, took the GIL back after each: the mask thread's GIL waits hold up the step
        (docs/performance.md, session 51). The socket's own receive timeout bounds the wait (answer_seconds)."""
        seconds = int(self.answer_seconds)
        process.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                struct.pack("ll", seconds, int((self.answer_seconds - seconds) * 1e6)))
        head = bytearray(4 + size)
        try:
            got = process.sock.recv_into(head, len(head), socket.MSG_WAITALL)
        except BlockingIOError:  # nothing came before the timeout
            raise EOFError(f"no answer within {self.answer_seconds} s") from None
        if got < len(head):
            raise EOFError(f"{got} of {len(head)} bytes within {self.answer_seconds} s")
        length = struct.unpack("!i", head[:4])[0]
        if length < size:
            raise ValueError(f"an answer of {length} bytes for {size} bytes of masks")
        rest = bytearray(length - size)   # the pickled failures, if any
        if rest and process.sock.recv_into(rest, len(rest), socket.MSG_WAITALL) < len(rest):
            raise EOFError("the failures' bytes did not come")
        return memoryview(head)[4:] if not rest else memoryview(bytes(head[4:]) + bytes(rest))

    def _send(self, process: _Process, message: tuple[Any, ...]) -> bool:
        try:
            # Pickled plainly (what Connection.recv reads): Connection.send makes a ForkingPickler for each message
            # (~1 us more a send here).
            process.conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
            return True
        except OSError:
            self._lose(process, "its pipe broke")
            return False

    def _lose(self, process: _Process, why: str) -> None:
        """Stop using a process whose replicas can no longer be trusted: their rows are filled here."""
        if process.dead:
            return
        log.warning("a mask process is lost (%s): its rows' masks are filled in the worker from now on", why)
        process.dead = True
        process.lost_at = time.monotonic()
        for row_id in [r for r, replica in self._replicas.items() if replica.process is process]:
            del self._replicas[row_id]
        process.conn.close()
        process.sock.close()
        process.popen.kill()
        try:
            process.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:  # reaped by _close at the latest
            pass


def _take(items: list[int]) -> list[int]:
    taken = list(items)
    items.clear()
    return taken


def _ready(process: _Process) -> bool:
    try:
        return process.conn.poll()
    except (EOFError, OSError):
        return True  # recv() then says what broke


def _spawn(start: tuple[Any, ...], losses: int = 0) -> _Process:
    """A mask process on one end of a socket pair; `start` sent at once (its tokenizer builds in the background)."""
    ours, theirs = socket.socketpair()
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    popen = subprocess.Popen([sys.executable, "-m", "mlxd.constraints.mask_worker", str(theirs.fileno())],
                             pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
    theirs.close()
    conn = Connection(os.dup(ours.fileno()))
    conn.send(start)
    return _Process(conn, ours, popen, losses=losses)


def _close(processes: list[_Process]) -> None:
    for process in processes:
        if not process.dead:
            process.conn.close()  # the process reads end of file and exits (both descriptors closed)
            process.sock.close()
    for process in processes:
        try:
            process.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait()
