"""What a hostile or careless client does to a daemon, as functions: used by the tests of this folder at CI size
and by tests/stress/attack.py at full size, which also reports the figures (health latency, memory, gaps)."""

from __future__ import annotations

import random
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc

from mlxd_client import Client, MlxdClientError, pb
from tests.availability.raw_http2 import RawConnection, connect

GENERATE = "/mlxd.v1.Inference/Generate"


def generate_request(request_id: str = "", max_tokens: int = 0, prompt_ids: tuple[int, ...] = (5,) * 8,
                     **options) -> bytes:
    return pb.GenerateRequest(request_id=request_id, tokens=pb.TokenIds(ids=list(prompt_ids)),
                              options=pb.GenerationOptions(max_tokens=max_tokens, ignore_eos=True,
                                                           **options)).SerializeToString()


@contextmanager
def header_only_streams(addr: str, count: int, per_connection: int = 40,
                        metadata: tuple = ()) -> Iterator[list[tuple[RawConnection, int]]]:
    """count calls that send their headers and never their request message, held open for the block."""
    conns: list[RawConnection] = []
    streams = []
    try:
        for i in range(count):
            if i % per_connection == 0:
                conns.append(RawConnection(addr))
            streams.append((conns[-1], conns[-1].open_stream(GENERATE, None, metadata)))
        yield streams
    finally:
        for conn in conns:
            conn.close()


@contextmanager
def undeliverable_streams(addr: str, count: int, max_tokens: int,
                          prefix: str = "unread") -> Iterator[list[RawConnection]]:
    """count generations whose replies cannot be delivered (a zero receive window), one connection each."""
    conns = []
    try:
        for i in range(count):
            conn = RawConnection(addr, window=0)
            conn.open_stream(GENERATE, generate_request(f"{prefix}-{i}", max_tokens))
            conns.append(conn)
        yield conns
    finally:
        for conn in conns:
            conn.close()


@contextmanager
def idle_connections(addr: str, count: int, preface: bool = False) -> Iterator[list[socket.socket]]:
    """count connections that send nothing (or only the HTTP/2 preface) and stay open. A connection over the
    daemon's cap is closed by it at once: its preface may then meet a closed socket, and it is left out."""
    socks = []
    try:
        for _ in range(count):
            sock = connect(addr)
            if preface:
                try:
                    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                except (BrokenPipeError, ConnectionResetError):
                    sock.close()
                    continue
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def health_latencies(addr: str, count: int, timeout: float = 10.0, token: str | None = None) -> list[float]:
    """Seconds per health Check, one after another on a fresh channel; raises on a failed or late answer."""
    out = []
    with Client(addr, token=token) as client:
        for _ in range(count):
            started = time.perf_counter()
            status = client.health(timeout=timeout)
            out.append(time.perf_counter() - started)
            assert status == "SERVING", status
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


def summary_ms(values: list[float]) -> str:
    return (f"p50 {statistics.median(values) * 1e3:.1f} ms, p99 {p99(values) * 1e3:.1f} ms, "
            f"max {max(values) * 1e3:.1f} ms")


@dataclass
class Gaps:
    """Arrival times of a long generation's chunks, from a thread; its longest gap is the longest the worker (or
    the event loop) stood still for this stream."""

    arrivals: list[float] = field(default_factory=list)
    tokens: int = 0
    error: BaseException | None = None

    def longest(self) -> float:
        return max((b - a for a, b in zip(self.arrivals, self.arrivals[1:])), default=0.0)


@contextmanager
def watched_stream(addr: str, max_tokens: int = 0) -> Iterator[Gaps]:
    """A greedy generation streaming in the background for the block; its chunk arrival times."""
    gaps = Gaps()
    stop = threading.Event()

    def run() -> None:
        with Client(addr) as client:
            stream = client.stub.Generate(pb.GenerateRequest(
                tokens=pb.TokenIds(ids=[5] * 8), options=pb.GenerationOptions(max_tokens=max_tokens, ignore_eos=True,
                                                                              temperature=0.0)), timeout=600)
            try:
                for response in stream:
                    gaps.arrivals.append(time.monotonic())
                    gaps.tokens += len(response.chunk.token_ids)
                    if stop.is_set():
                        stream.cancel()
                        return
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.CANCELLED:
                    gaps.error = error

    thread = threading.Thread(target=run)
    thread.start()
    try:
        while not gaps.arrivals and thread.is_alive():
            time.sleep(0.01)
        yield gaps
    finally:
        stop.set()
        thread.join(60)


def quick_cancels(client: Client, count: int, seed: int = 1) -> list[str]:
    """count generations (each to the context length) cancelled 0-4 ms after they were sent; the request ids the
    daemon still holds a second later: cancels it lost, requests generating for nobody."""
    rng = random.Random(seed)
    ids = []
    for i in range(count):
        request_id = f"quick-cancel-{i}"
        call = client.stub.Generate(pb.GenerateRequest(
            request_id=request_id, prompt="tell me a long story " * 20,
            options=pb.GenerationOptions(max_tokens=0, ignore_eos=True)), timeout=60)
        time.sleep(rng.uniform(0, 0.004))
        call.cancel()
        ids.append(request_id)
    time.sleep(1.0)   # a cancelled request ends within a worker step
    return [rid for rid in ids if client.cancel(rid)]


def heavy_stop_strings(count: int = 256, length: int = 1024) -> list[str]:
    """Stop strings whose automaton is as large as the limits allow (no shared prefixes)."""
    return [f"{i:04d}".ljust(length, "x") for i in range(count)]


def concurrent_calls(addr: str, count: int, call) -> list[object]:
    """Run call(client, i) count times at once, one channel each; the results or the errors."""
    results: list[object] = [None] * count

    def one(i: int) -> None:
        with Client(addr) as client:
            try:
                results[i] = call(client, i)
            except MlxdClientError as error:
                results[i] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results
