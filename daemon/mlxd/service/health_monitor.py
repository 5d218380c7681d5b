"""Publishes the worker's state to grpc.health.v1, so health never waits on the worker (DESIGN.md §1).

SERVING while the worker thread is alive and serving and not stalled; NOT_SERVING while loading, draining,
after the thread died, or while work is pending and the worker has made no progress for `stall_seconds`.
"""

from __future__ import annotations

import logging
import threading
import time

from grpc_health.v1 import health, health_pb2

from mlxd.engine.worker import Worker, WorkerState

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def worker_status(worker: Worker, stall_seconds: float, now: float) -> int:
    if worker.state is not WorkerState.SERVING or not worker.is_alive():
        return NOT_SERVING
    if worker.live_count() and now - worker.last_progress > stall_seconds:
        return NOT_SERVING
    return SERVING


class HealthMonitor:
    def __init__(self, worker: Worker, servicer: health.HealthServicer, services: list[str],
                 stall_seconds: float, interval: float = 0.1) -> None:
        self._worker = worker
        self._servicer = servicer
        self._services = services
        self._stall = stall_seconds
        self._interval = interval
        self._stop = threading.Event()
        self._status: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._publish()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._set(NOT_SERVING)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._publish()

    def _publish(self) -> None:
        self._set(worker_status(self._worker, self._stall, time.monotonic()))

    def _set(self, status: int) -> None:
        if status != self._status:
            if self._status is not None:
                log.warning("health: %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status))
            self._status = status
            for name in self._services:
                self._servicer.set(name, status)
