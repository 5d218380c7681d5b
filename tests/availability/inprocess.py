"""The service in-process: the real grpc.aio server and servicer on a unix socket, with a scripted fake engine in
place of the MLX worker, for service tests where a real model is not the point (they run in milliseconds)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from mlxd.engine.request import FinalEvent, FinishReason, GenerationRequest, TokenEvent
from mlxd.engine.worker import MlxMemory, WorkerState
from mlxd.errors import InvalidRequest
from mlxd.loading.tokenizer import load_tokenizer
from mlxd.service.auth import BearerTokenInterceptor
from mlxd.service.decoding import StrictDecodingInterceptor
from mlxd.service.grpc_server import HEALTH_NAMES, start_server
from mlxd.service.limits import Limits
from mlxd.service.model_info import ServedModel
from mlxd.service.preparation import Preparation
from mlxd.service.servicer import InferenceServicer
from mlxd_proto.v1 import inference_pb2 as pb
from tests.helpers.daemon_process import FIXTURES

LLAMA = FIXTURES / "parity" / "llama"


@dataclass
class FakeEngine:
    """Stands in for the worker: each submitted request gets `tokens` token events (one every `step` seconds, on a
    thread of its own, token id 5, text "a"), then a final event; a cancelled request ends with CANCELLED at its
    next step. `pause_at` holds a request back while its sink's backlog is that large (the worker's backpressure)."""

    tokens: int = 4
    step: float = 0.0
    pause_at: int = 0
    state: WorkerState = WorkerState.SERVING
    memory: MlxMemory = field(default_factory=MlxMemory)
    last_progress: float = field(default_factory=time.monotonic)
    submitted: list[GenerationRequest] = field(default_factory=list)
    live: dict[str, GenerationRequest] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, request: GenerationRequest) -> None:
        with self.lock:
            if request.request_id in self.live:
                raise InvalidRequest(f"request_id {request.request_id!r} is already in use by a live request")
            self.live[request.request_id] = request
            self.submitted.append(request)
        threading.Thread(target=self._run, args=(request,), daemon=True).start()

    def _run(self, request: GenerationRequest) -> None:
        produced = 0
        while produced < self.tokens and not request.cancel.is_set:
            if self.pause_at and request.events.backlog() >= self.pause_at:
                time.sleep(0.005)
                continue
            time.sleep(self.step)
            request.events.put(TokenEvent("a", [5]))
            produced += 1
        with self.lock:
            del self.live[request.request_id]
        reason = FinishReason.CANCELLED if request.cancel.is_set else FinishReason.LENGTH
        request.events.put(FinalEvent(reason, len(request.prompt_ids), produced))

    def cancel(self, request_id: str, reason: str = "cancel rpc") -> bool:
        with self.lock:
            request = self.live.get(request_id)
        if request is not None:
            request.cancel.cancel(reason)
        return request is not None

    def is_alive(self) -> bool:
        return True

    def live_count(self) -> int:
        with self.lock:
            return len(self.live)


def served_llama() -> ServedModel:
    tokenizer = load_tokenizer(LLAMA)
    info = pb.ModelInfo(model_id="llama", architecture="llama", context_length=2048, vocab_size=320,
                        has_chat_template=True)
    return ServedModel(info=info, tokenizer=tokenizer, sampling_defaults={})


@dataclass
class InProcess:
    addr: str
    engine: FakeEngine
    servicer: InferenceServicer
    loop: asyncio.AbstractEventLoop
    preparation: Preparation

    def call(self, fn: Callable[[], object]) -> None:
        self.loop.call_soon_threadsafe(fn)


@contextlib.contextmanager
def serving(engine: FakeEngine | None = None, *, limits: Limits | None = None, slots: int = 2, stream_limit: int = 1024,
            stalled_seconds: float = 60.0, token: bytes | None = None,
            model: ServedModel | None = None) -> Iterator[InProcess]:
    """Serve on a unix socket from an event loop on a thread of its own, until the block ends."""
    engine = engine or FakeEngine()
    folder = Path(tempfile.mkdtemp(prefix="mlxd-inproc-"))
    started: dict = {}
    ready = threading.Event()
    stop: list[asyncio.Event] = []

    async def main() -> None:
        preparation = Preparation(slots)
        servicer = InferenceServicer(engine, limits or Limits(), preparation, stream_limit=stream_limit,
                                     stalled_seconds=stalled_seconds)
        servicer.set_model(model or served_llama())
        health = health_aio.HealthServicer()
        interceptors = ([BearerTokenInterceptor(token, exempt_health=False)] if token else []) + \
            [StrictDecodingInterceptor()]
        server, (listener,) = await start_server(f"unix:{folder / 's.sock'}", servicer, health,
                                              interceptors=interceptors)
        for name in HEALTH_NAMES:
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        stop.append(asyncio.Event())
        started.update(addr=listener.addr, servicer=servicer, loop=asyncio.get_running_loop(), preparation=preparation)
        ready.set()
        await stop[0].wait()
        servicer.cancel_all("shutdown")   # as the daemon's shutdown does before stopping its server
        await server.stop(0)
        listener.remove()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30), "the in-process server did not start"
    try:
        yield InProcess(started["addr"], engine, started["servicer"], started["loop"], started["preparation"])
    finally:
        started["loop"].call_soon_threadsafe(stop[0].set)
        thread.join(10)
        folder.rmdir()
