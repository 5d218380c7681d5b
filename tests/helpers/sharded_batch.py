"""The engine's batched decode and prefix cache on a tensor-parallel group, in the parity harness's rank processes
(sharded_logits.py): rank 0 drives the real ReplicatingRunner and ReplicatingPrefixCache through a fixed
scheduler-like script, and rank 1 replays what they send (parallel/replay.py's Replayer, as a follower does) over a
plain loopback socket, so the replicated calls, not a copy of the script, keep rank 1 in step. With no group the
same script runs on a plain Runner and PrefixCache: the 1-rank reference.

The script: rows of mixed prompt lengths join a running batch and leave it between steps, and the last row opens
with the first row's prompt from the prefix cache (a hit for all but its last token), so its greedy tokens must
equal the first row's cold ones."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import mlx.core as mx

from mlxd.engine.prefix_cache import PrefixCache
from mlxd.engine.runner import Runner
from mlxd.generation.params import SamplingParams
from mlxd.loading.loader import LoadedModel
from mlxd.parallel.channel import recv_frame, send_frame
from mlxd.parallel.leader import ReplicatedParts
from mlxd.parallel.replay import Divergence, Replayer
from mlxd.parallel.replication import ReplicatingRunner

GREEDY = SamplingParams(temperature=0.0)
HIT_TOKENS = 6        # tokens of the prefix-cache hit's row compared with the cold row's
PREFIX_BYTES = 64 << 20
DONE = "fixture_done"  # rank 0's last message for a fixture: the tokens its last step read


def prompts(ids: list[int]) -> list[list[int]]:
    """Three prompts of different lengths from a fixture's prompt: all of it, its first half, its last two thirds."""
    n = len(ids)
    return [ids, ids[:max(4, n // 2)], ids[n // 3:]]


def script(runner: Runner, prefix: PrefixCache, ids: list[int]) -> dict[int, list[int]]:
    """Greedy tokens per row (in the order the steps gave them), rows joining and leaving a running batch."""
    tokens: dict[int, list[int]] = {}
    live: set[int] = set()

    def step(times: int) -> None:
        for _ in range(times):
            for result in runner.step():
                if result.row in live:  # a row closed while its step was queued: the scheduler drops that token
                    tokens.setdefault(result.row, []).extend(result.tokens)

    def start(row: int, prompt: list[int], remember: bool) -> None:
        found, cache = prefix.lookup(prompt[:-1], runner.new_cache)
        runner.open(row, GREEDY, prompt, None, cache)
        if found < len(prompt) - 1:
            runner.prefill(row, prompt[found:-1])
        if remember:
            prefix.insert(prompt[:-1], runner.cache_of(row))
        runner.join(row, prompt[-1])
        live.add(row)

    def close(row: int) -> None:
        live.discard(row)
        runner.close(row)

    cold, short, tail = prompts(ids)
    start(0, cold, remember=True)
    step(3)
    start(1, short, remember=False)   # joins a batch of one, a shorter prompt
    step(2)
    start(2, tail, remember=False)
    step(3)
    close(1)                          # leaves from the middle of the batch
    step(2)
    start(3, cold, remember=False)    # the prefix-cache hit
    step(HIT_TOKENS + 1)
    close(0)
    close(2)
    step(1)
    close(3)
    # Drained as the scheduler does (it steps while the runner has work): the step queued last holds collectives,
    # which must run on both ranks before either moves on (or exits).
    while runner.has_work():
        step(1)
    return tokens


def single(loaded: LoadedModel, ids: list[int]) -> dict[int, list[int]]:
    return script(Runner(loaded.model, loaded.vocab_size), PrefixCache(PREFIX_BYTES), ids)


def lead(loaded: LoadedModel, ids: list[int], sock: socket.socket) -> dict[int, list[int]]:
    """Rank 0: the script on the replicating runner and prefix cache, every call sent to rank 1 first."""
    sent: list[dict] = []

    def send(message: dict) -> None:
        sent.append(message)
        send_frame(sock, message)

    parts = ReplicatedParts(send)
    runner = parts.runner(_Runtime(loaded))  # type: ignore[arg-type]
    tokens = script(runner, parts.prefix_cache(PREFIX_BYTES, runner), ids)
    assert isinstance(runner, ReplicatingRunner)
    send({"op": DONE, "steps": sum(m["op"] == "step" for m in sent), "check": runner._read})
    return tokens


def follow(loaded: LoadedModel, sock: socket.socket) -> None:
    """Rank 1: replay rank 0's calls until its DONE; raise if this rank read other tokens than rank 0."""
    replayer, steps = Replayer(loaded.model, loaded.vocab_size, None), 0
    while True:
        message = recv_frame(sock)
        if message is None:
            raise RuntimeError("rank 0 closed the side channel mid-fixture")
        if message["op"] == DONE:
            break
        steps += message["op"] == "step"
        replayer.handle(message)
    if steps != message["steps"]:
        raise Divergence(f"rank 1 replayed {steps} steps of rank 0's {message['steps']}")
    if replayer._read != message["check"]:  # each step checks the one before it: this checks the last
        raise Divergence(f"rank 0's last step read {message['check']}, this rank's {replayer._read}")


class _Runtime:
    """What ReplicatedParts.runner reads of a ModelRuntime."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.model, self.vocab_size, self.image_encoder = loaded.model, loaded.vocab_size, None


def side_channel(out: Path, rank: int) -> socket.socket:
    """A loopback socket between ranks 0 and 1: rank 0 listens and writes its port under `out`."""
    port_file = out / "side-channel.port"
    if rank == 0:
        server = socket.create_server(("127.0.0.1", 0))
        written = port_file.with_suffix(".tmp")
        written.write_text(str(server.getsockname()[1]))
        written.rename(port_file)  # whole, never half-written, when rank 1 sees it
        conn, _ = server.accept()
        server.close()
        return conn
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("rank 0 never opened the side channel")
        time.sleep(0.05)
    return socket.create_connection(("127.0.0.1", int(port_file.read_text())))


def to_arrays(tokens: dict[int, list[int]]) -> dict[str, mx.array]:
    return {f"batch_row{row}": mx.array(ids, dtype=mx.int32) for row, ids in tokens.items()}

