"""`mlxd serve`: the process contract with the parent (DESIGN.md §3).

Bind first (health answers NOT_SERVING while loading), load and warm up on the worker, then SERVING and one
JSON ready line on stdout. SIGTERM/SIGINT or the parent's death drain and exit 0; a load failure exits 1
with a one-line reason as the last line on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mlxd.engine.worker import Worker, WorkerOptions, WorkerState
from mlxd.errors import MlxdError
from mlxd.launcher import blas_note
from mlxd.loading.identity import content_digest
from mlxd.service.auth import BearerTokenInterceptor, TokenFileError, read_token
from mlxd.service.decoding import StrictDecodingInterceptor
from mlxd.service.health_monitor import HealthMonitor
from mlxd.service.limits import Limits
from mlxd.service.listen import Listener, ListenError, bind, check_policy
from mlxd.service.model_info import served_model
from mlxd.service.request_log import RequestLog
from mlxd.service.servicer import InferenceServicer
from mlxd.service.tls import TlsConfigError, TlsFiles, server_credentials
from mlxd_proto.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name


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


def serve(options: ServeOptions) -> int:
    stop = threading.Event()
    stop_reason: list[str] = []

    def request_stop(reason: str) -> None:
        if not stop.is_set():
            stop_reason.append(reason)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: request_stop(signal.Signals(signum).name))
    _watch_parent(request_stop, options.exit_on_stdin_eof)

    log.info("%s", blas_note())
    try:
        check_policy(options.addr, tls=options.tls is not None, token=options.auth_token_file is not None)
        credentials = server_credentials(options.tls) if options.tls is not None else None
        interceptors = _interceptors(options)
    except (ListenError, TlsConfigError, TokenFileError) as error:
        print(f"mlxd: {error}", file=sys.stderr, flush=True)
        return 1
    worker = Worker(options.worker)
    servicer = InferenceServicer(worker, options.limits, options.request_log)
    health_servicer = health.HealthServicer(experimental_non_blocking=True,
                                            experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=2))
    try:
        server, listener = _start_server(options, servicer, health_servicer, credentials, interceptors)
    except (RuntimeError, OSError, ListenError) as error:
        print(f"mlxd: cannot listen on {options.addr}: {error}", file=sys.stderr, flush=True)
        return 1
    monitor = HealthMonitor(worker, health_servicer, ["", SERVICE_NAME], options.stall_seconds)

    # Hashing the model files runs beside loading; hashlib releases the GIL.
    digest = futures.ThreadPoolExecutor(max_workers=1).submit(content_digest, options.worker.model_path)
    worker.start()
    while not worker.ready.wait(0.1):
        if stop.is_set():
            log.info("stopping before the model was loaded (%s)", stop_reason[0])
            return _shutdown(server, worker, monitor, options, listener, graceful=False)
    try:
        worker.wait_ready(0)
        servicer.set_model(served_model(options.worker.model_path, worker, digest.result()))
    except (MlxdError, OSError) as error:
        server.stop(0)
        listener.remove()
        log.error("%s", error)
        print(f"mlxd: cannot load model: {error}", file=sys.stderr, flush=True)
        return 1
    monitor.start()
    print(json.dumps({"event": "ready", "addr": listener.addr, "pid": os.getpid(),
                      "model": str(options.worker.model_path), "digest": servicer.model_info().digest}), flush=True)
    # Wake up regularly: a signal delivered to another thread (gRPC's, CUDA's) runs its Python handler only
    # when the main thread runs bytecode, and a lock wait without a timeout never returns for it.
    while not stop.wait(0.2):
        pass
    log.info("stopping (%s)", stop_reason[0])
    return _shutdown(server, worker, monitor, options, listener, graceful=stop_reason[0] != "parent died")


def _interceptors(options: ServeOptions) -> list[grpc.ServerInterceptor]:
    # Authentication runs first: the bytes of a caller without the token are never parsed.
    interceptors: list[grpc.ServerInterceptor] = []
    if options.auth_token_file is not None:
        interceptors.append(BearerTokenInterceptor(read_token(options.auth_token_file), options.auth_exempt_health))
    interceptors.append(StrictDecodingInterceptor())
    return interceptors


def _start_server(options: ServeOptions, servicer: InferenceServicer, health_servicer: health.HealthServicer,
                  credentials: grpc.ServerCredentials | None,
                  interceptors: list[grpc.ServerInterceptor]) -> tuple[grpc.Server, Listener]:
    max_bytes = options.limits.max_message_bytes
    # Every live stream holds a thread: queued requests, active ones, and room for unary calls and probes.
    threads = options.worker.max_queue + options.worker.max_batch_size + 16
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
                         interceptors=interceptors,
                         options=[("grpc.max_receive_message_length", max_bytes),
                                  ("grpc.max_send_message_length", max_bytes),
                                  ("grpc.so_reuseport", 0)])
    inference_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    listener = bind(server, options.addr, credentials)
    server.start()
    return server, listener


def _shutdown(server: grpc.Server, worker: Worker, monitor: HealthMonitor, options: ServeOptions,
              listener: Listener, graceful: bool) -> int:
    monitor.stop()  # from here on health says NOT_SERVING
    worker.begin_drain()
    if graceful:
        deadline = time.monotonic() + options.grace_seconds
        while worker.live_count() and time.monotonic() < deadline:
            time.sleep(0.05)
    if worker.live_count():
        log.info("cancelling %d request(s) at the grace deadline", worker.live_count())
        worker.cancel_all("shutdown")
        deadline = time.monotonic() + 2.0
        while worker.live_count() and time.monotonic() < deadline:
            time.sleep(0.02)
    server.stop(grace=1.0 if graceful else 0.2).wait()
    worker.stop(timeout=5.0)
    listener.remove()
    return 0


def _watch_parent(request_stop, exit_on_stdin_eof: bool) -> None:
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
