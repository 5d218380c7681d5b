"""grpc.health.v1 on the event loop, from state the worker publishes, so health never waits on the worker
(DESIGN.md §1) nor on any client: Check is answered by a coroutine that reads one dict entry.

SERVING while the worker thread is alive and serving and not stalled; NOT_SERVING while loading, draining,
after the thread died, or while work is pending and the worker has made no progress for `stall_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from mlxd.engine.worker import WorkerState
from mlxd.service.engine import Engine

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def worker_status(engine: Engine, stall_seconds: float, now: float) -> int:
    if engine.state is not WorkerState.SERVING or not engine.is_alive():
        return NOT_SERVING
    if engine.live_count() and now - engine.last_progress > stall_seconds:
        return NOT_SERVING
    return SERVING


class HealthMonitor:
    """Publishes the engine's status to the health servicer every `interval` seconds, as a task on the loop."""

    def __init__(self, engine: Engine, servicer: health_aio.HealthServicer, services: list[str], stall_seconds: float,
                 interval: float = 0.1) -> None:
        self._engine = engine
        self._servicer = servicer
        self._services = services
        self._stall = stall_seconds
        self._interval = interval
        self._status: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._publish()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._set(NOT_SERVING)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._publish()

    async def _publish(self) -> None:
        await self._set(worker_status(self._engine, self._stall, time.monotonic()))

    async def _set(self, status: int) -> None:
        if status != self._status:
            if self._status is not None:
                log.warning("health: %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status))
            self._status = status
            for name in self._services:
                await self._servicer.set(name, status)
