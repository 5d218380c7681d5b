"""A soak run: many concurrent requests of every kind against one daemon, each checked on its own.

Kinds: greedy and seeded (must give the tokens they give alone), sampled, with stop strings, cancelled by the
client, with a deadline too short to finish, cancelled by a Cancel RPC. Used by tests/faults/test_soak.py at CI
size and by tests/stress/soak.py at full size, both with the daemon's memory after each hundred requests.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from mlxd_client import Client, MlxdClientError, pb
from tests.helpers.daemon_process import resident_bytes

KINDS = ("greedy", "seeded", "sampled", "stop", "client_cancel", "deadline", "cancel_rpc")
DEADLINE_SECONDS = 60.0   # every call has one: a stream still open after it is a hang


@dataclass(frozen=True)
class Spec:
    kind: str
    prompt: tuple[int, ...]
    max_tokens: int
    options: tuple[tuple[str, object], ...] = ()

    def kwargs(self) -> dict:
        return {**{k: list(v) if isinstance(v, tuple) else v for k, v in self.options}, "max_tokens": self.max_tokens,
                "ignore_eos": True}


@dataclass
class Outcome:
    spec: Spec
    token_ids: list[int] = field(default_factory=list)
    final: pb.Final | None = None
    code: grpc.StatusCode | None = None
    seconds: float = 0.0


def plan(count: int, seed: int) -> list[Spec]:
    """count requests; greedy and seeded ones come from a few distinct specs so each has a reference."""
    rng = random.Random(seed)
    repeatable = [Spec("greedy", tuple(rng.randrange(3, 300) for _ in range(rng.randint(1, 12))), rng.randint(1, 24),
                       (("temperature", 0.0),)) for _ in range(4)]
    repeatable += [Spec("seeded", tuple(rng.randrange(3, 300) for _ in range(rng.randint(1, 12))), rng.randint(1, 24),
                        (("temperature", 0.9), ("top_p", 0.9), ("seed", rng.randrange(2**32)))) for _ in range(4)]
    specs = []
    for _ in range(count):
        kind = rng.choice(KINDS)
        prompt = tuple(rng.randrange(3, 300) for _ in range(rng.randint(1, 40)))
        if kind in ("greedy", "seeded"):
            specs.append(rng.choice([s for s in repeatable if s.kind == kind]))
        elif kind == "sampled":
            specs.append(Spec(kind, prompt, rng.randint(1, 32), (("temperature", rng.uniform(0.1, 1.5)),
                                                                  ("top_k", rng.randint(0, 50)))))
        elif kind == "stop":
            specs.append(Spec(kind, prompt, rng.randint(1, 32), (("temperature", 1.0),
                                                                  ("stop", (chr(rng.randrange(97, 123)),)))))
        else:
            specs.append(Spec(kind, prompt, 0 if kind == "deadline" else rng.randint(8, 64)))
    return specs


def run_one(client: Client, spec: Spec) -> Outcome:
    outcome = Outcome(spec)
    started = time.monotonic()
    request_id = uuid.uuid4().hex
    timeout = 0.05 if spec.kind == "deadline" else DEADLINE_SECONDS
    stream = client.generate(tokens=list(spec.prompt), request_id=request_id, timeout=timeout, **spec.kwargs())
    try:
        for n, response in enumerate(stream):
            if response.HasField("chunk"):
                outcome.token_ids += response.chunk.token_ids
                if spec.kind == "client_cancel" and n == 1:
                    stream.close()  # the client walks away; the client library cancels the call
                    outcome.code = grpc.StatusCode.CANCELLED
                    break
                if spec.kind == "cancel_rpc" and n == 0:
                    client.cancel(request_id)
            else:
                outcome.final = response.final
                assert response.final.request_id == request_id, "a final message of another request"
    except MlxdClientError as error:
        outcome.code = error.code
    outcome.seconds = time.monotonic() - started
    return outcome


def check(outcome: Outcome, references: dict[Spec, list[int]]) -> None:
    """Raise AssertionError when an outcome is not what its kind allows."""
    spec = outcome.spec
    if outcome.final is not None:
        assert outcome.final.usage.completion_tokens == len(outcome.token_ids), "tokens lost or from another stream"
        if spec.kind in references and outcome.final.finish_reason == pb.FINISH_REASON_LENGTH:
            assert outcome.token_ids == references[spec], f"{spec} differs from the same request run alone"
        if spec.kind == "cancel_rpc":
            assert outcome.final.finish_reason in (pb.FINISH_REASON_CANCELLED, pb.FINISH_REASON_LENGTH)
        return
    allowed = {"client_cancel": grpc.StatusCode.CANCELLED, "deadline": grpc.StatusCode.DEADLINE_EXCEEDED}
    assert spec.kind in allowed and outcome.code == allowed[spec.kind], f"{spec}: {outcome.code}"


def references(addr: str, specs: list[Spec]) -> dict[Spec, list[int]]:
    """The tokens of each greedy and seeded spec, run alone."""
    with Client(addr) as client:
        return {spec: run_one(client, spec).token_ids for spec in set(specs) if spec.kind in ("greedy", "seeded")}


def soak(addr: str, specs: list[Spec], concurrency: int) -> list[Outcome]:
    """Run specs over `concurrency` threads, one client (channel) each."""
    local = threading.local()
    clients: list[Client] = []

    def one(spec: Spec) -> Outcome:
        if not hasattr(local, "client"):
            local.client = Client(addr)
            clients.append(local.client)
        return run_one(local.client, spec)

    try:
        with futures.ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, specs))
    finally:
        for client in clients:
            client.close()


@dataclass(frozen=True)
class Memory:
    """The daemon's memory while idle. On a CPU, MLX's arrays live in the resident set too, so `combined` counts
    them twice there; on a GPU they are device memory, outside it. The prefix cache keeps KV snapshots up to its
    budget (--prefix-cache-mb) by design: a soak gives it a small one and lets it fill before measuring."""

    resident_bytes: int
    mlx_active_bytes: int
    mlx_cache_bytes: int
    prefix_cache_bytes: int

    @property
    def combined(self) -> int:
        return self.resident_bytes + self.mlx_active_bytes

    @property
    def engine(self) -> int:
        """MLX active memory less the prefix cache's snapshots."""
        return self.mlx_active_bytes - self.prefix_cache_bytes


# glibc's malloc with its thresholds fixed, for a daemon whose resident set is measured. By default the mmap threshold
# rises to the largest block freed so far and the heap is trimmed lazily, so the idle resident set steps by 20-30 MB
# either way between samples (seen 91 -> 110 and 111 -> 142 MiB, all of it anonymous memory, with MLX's memory flat);
# with these it stays within ~1 MB over hundreds of requests, and a leak is what remains.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "1048576"}


def memory(addr: str, pid: int) -> Memory:
    """Resident set from /proc (Linux), MLX figures from GetModelInfo, once the daemon is idle."""
    time.sleep(0.5)  # cancelled requests end at the worker's next step; idle, it publishes every 50 ms
    with Client(addr) as client:
        info = client.model_info()
    return Memory(resident_bytes(pid), info.mlx_active_memory_bytes, info.mlx_cache_memory_bytes,
                  info.prefix_cache_bytes)


def growth(samples: list[Memory]) -> dict[str, float]:
    """Growth from the first sample to the last."""
    first, last = samples[0], samples[-1]
    return {name: (value(last) - value(first)) / value(first) for name, value in (
        ("resident", lambda m: m.resident_bytes), ("mlx_active", lambda m: m.mlx_active_bytes),
        ("mlx_active_less_prefix_cache", lambda m: m.engine), ("resident+mlx_active", lambda m: m.combined))}
