"""What the service needs from the engine (the MLX worker), and nothing more.

The servicer and the health monitor are typed against this Protocol, so a scripted fake can stand in for the
worker in service tests. Every member is safe to call from the event loop: none of them waits on the worker.
"""

from __future__ import annotations

from typing import Protocol

from mlxd.engine.request import GenerationRequest
from mlxd.engine.worker import MlxMemory, WorkerState


class Engine(Protocol):
    state: WorkerState
    memory: MlxMemory           # last published by the worker (gRPC code makes no MLX calls)
    last_progress: float        # time.monotonic() of the worker's last step or idle wait

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request; raises Unavailable, InvalidRequest (duplicate id) or ResourceExhausted (queue full)."""
        ...

    def cancel(self, request_id: str, reason: str = "cancel rpc") -> bool: ...

    def is_alive(self) -> bool: ...

    def live_count(self) -> int: ...
