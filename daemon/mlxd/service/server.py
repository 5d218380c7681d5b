"""`mlxd serve`: the process contract with the parent (DESIGN.md §3).

Bind first (health answers NOT_SERVING while loading), load and warm up on the worker, then SERVING and one
JSON ready line on stdout. SIGTERM/SIGINT or the parent's death drain and exit 0; a load failure exits 1
with a one-line reason as the last line on stderr. The main thread runs the event loop that serves every call.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1.health import aio as health_aio

from mlxd.engine.worker import RuntimeFactory, Worker, WorkerOptions
from mlxd.errors import MlxdError
from mlxd.launcher import blas_note
from mlxd.loading.identity import content_digest
from mlxd.service.auth import BearerTokenInterceptor, TokenFileError, read_token
from mlxd.service.connections import ConnectionLimits, channel_options, raise_fd_limit
from mlxd.service.decoding import StrictDecodingInterceptor
from mlxd.service.grpc_server import HEALTH_NAMES, start_server
from mlxd.service.health import HealthMonitor
from mlxd.service.limits import Limits
from mlxd.service.listen import Listener, ListenError, check_policy
from mlxd.service.loop import call_soon
from mlxd.service.model_info import served_model
from mlxd.service.preparation import Preparation
from mlxd.service.request_log import RequestLog
from mlxd.service.servicer import InferenceServicer
from mlxd.service.tls import TlsConfigError, TlsFiles, server_credentials

log = logging.getLogger(__name__)

# The service's own bound on a stream's untaken events, as a multiple of the worker's --max-stream-backlog (where
# the worker pauses the row): reached only if events keep coming anyway.
STREAM_LIMIT_FACTOR = 4


@dataclass
class ServeOptions:
    worker: WorkerOptions
    addr: str = "127.0.0.1:50051"
    limits: Limits = Limits()
    grace_seconds: float = 10.0
    stall_seconds: float = 60.0
    exit_on_stdin_eof: bool = False
    tls: TlsFiles | None = None
    auth_token_file: Path | None = None
    auth_exempt_health: bool = False
    request_log: RequestLog = RequestLog()
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    preparation_slots: int = 2      # requests prepared at once (tokenizing, templates, stop strings, images)
    load: RuntimeFactory | None = None  # how the worker builds its runtime; None: load options.worker.model_path


def serve(options: ServeOptions) -> int:
    fd_limit = raise_fd_limit()
    return asyncio.run(_serve(options, fd_limit))


async def _serve(options: ServeOptions, fd_limit: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stop_reason: list[str] = []

    def request_stop(reason: str) -> None:
        if not stop.is_set():
            stop_reason.append(reason)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig.name)
    _watch_parent(functools.partial(call_soon, loop, request_stop), options.exit_on_stdin_eof)

    log.info("%s; open-file limit %d", blas_note(), fd_limit)
    try:
        check_policy(options.addr, tls=options.tls is not None, token=options.auth_token_file is not None)
        credentials = server_credentials(options.tls) if options.tls is not None else None
        interceptors = _interceptors(options)
    except (ListenError, TlsConfigError, TokenFileError) as error:
        print(f"mlxd: {error}", file=sys.stderr, flush=True)
        return 1
    worker = Worker(options.worker, load=options.load)
    preparation = Preparation(options.preparation_slots)
    servicer = InferenceServicer(worker, options.limits, preparation, request_log=options.request_log,
                                 stream_limit=STREAM_LIMIT_FACTOR * options.worker.max_stream_backlog,
                                 stalled_seconds=options.worker.stalled_stream_seconds)
    health = health_aio.HealthServicer()
    server_options = _message_options(options.limits) + channel_options(options.connections, fd_limit)
    try:
        server, listeners = await start_server(options.addr, servicer, health, credentials=credentials,
                                               interceptors=interceptors, options=server_options, parent_socket=True)
    except (RuntimeError, OSError, ListenError) as error:
        print(f"mlxd: cannot listen on {options.addr}: {error}", file=sys.stderr, flush=True)
        return 1
    monitor = HealthMonitor(worker, health, HEALTH_NAMES, options.stall_seconds)

    # Hashing the model files runs beside loading; hashlib releases the GIL.
    digest = futures.ThreadPoolExecutor(max_workers=1).submit(content_digest, options.worker.model_path)
    worker.start()
    while not worker.ready.is_set():
        if stop.is_set():
            log.info("stopping before the model was loaded (%s)", stop_reason[0])
            return await _shutdown(server, worker, servicer, monitor, options, listeners, graceful=False)
        await asyncio.sleep(0.1)
    try:
        worker.wait_ready(0)
        served = served_model(options.worker.model_path, worker, await asyncio.wrap_future(digest))
        served.grammars.prepare()  # before SERVING: built later, its token tables stalled every stream
        servicer.set_model(served)
    except (MlxdError, OSError) as error:
        await server.stop(0)
        for listener in listeners:
            listener.remove()
        log.error("%s", error)
        print(f"mlxd: cannot load model: {error}", file=sys.stderr, flush=True)
        return 1
    await monitor.start()
    # parent_addr: the parent's own socket, with a connection cap of its own (see start_server).
    print(json.dumps({"event": "ready", "addr": listeners[0].addr, "parent_addr": listeners[1].addr,
                      "pid": os.getpid(), "model": str(options.worker.model_path),
                      "digest": servicer.model_info().digest}), flush=True)
    await _wait_for_stop(stop, worker, request_stop)
    log.info("stopping (%s)", stop_reason[0])
    code = await _shutdown(server, worker, servicer, monitor, options, listeners,
                           graceful=stop_reason[0] != "parent died" and worker.fatal is None)
    if worker.fatal is not None:
        print(f"mlxd: {worker.fatal}", file=sys.stderr, flush=True)
        return 1
    return code


async def _wait_for_stop(stop: asyncio.Event, worker: Worker, request_stop: Callable[[str], None]) -> None:
    """Until a signal or the parent's death asks to stop, or the worker can serve no more (worker.fail)."""
    while not stop.is_set():
        if worker.fatal is not None:
            request_stop(f"fatal: {worker.fatal}")
            break
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except asyncio.TimeoutError:
            pass


def _interceptors(options: ServeOptions) -> list[grpc.aio.ServerInterceptor]:
    # Authentication runs first, on the call's headers: the bytes of a caller without the token are never read.
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if options.auth_token_file is not None:
        interceptors.append(BearerTokenInterceptor(read_token(options.auth_token_file), options.auth_exempt_health))
    interceptors.append(StrictDecodingInterceptor())
    return interceptors


def _message_options(limits: Limits) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            ("grpc.so_reuseport", 0)]


async def _shutdown(server: grpc.aio.Server, worker: Worker, servicer: InferenceServicer, monitor: HealthMonitor,
                    options: ServeOptions, listeners: list[Listener], graceful: bool) -> int:
    await monitor.stop()  # from here on health says NOT_SERVING
    worker.begin_drain()
    if graceful:
        deadline = time.monotonic() + options.grace_seconds
        while worker.live_count() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    servicer.cancel_all("shutdown")   # those still being prepared, too
    if worker.live_count():
        log.info("cancelling %d request(s) at the grace deadline", worker.live_count())
        worker.cancel_all("shutdown")
        deadline = time.monotonic() + 2.0
        while worker.live_count() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    aside = [listener.set_aside_replacement() for listener in listeners]
    await server.stop(grace=1.0 if graceful else 0.2)
    for listener, moved in zip(listeners, aside):
        listener.restore(moved)
        listener.remove()
    # A failed worker's thread may wait in a collective whose other rank is gone: do not wait for it long.
    await asyncio.get_running_loop().run_in_executor(None, worker.stop, 5.0 if worker.fatal is None else 0.5)
    return 0


def _watch_parent(request_stop: Callable[[str], None], exit_on_stdin_eof: bool) -> None:
    """The daemon must not outlive the process that spawned it (DESIGN.md §3)."""
    parent = os.getppid()

    def poll_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        request_stop("parent died")

    threading.Thread(target=poll_parent, name="parent-watch", daemon=True).start()
    if exit_on_stdin_eof:
        def read_stdin() -> None:
            while sys.stdin.buffer.read(4096):
                pass
            request_stop("parent died")
        threading.Thread(target=read_stdin, name="stdin-watch", daemon=True).start()
