"""The one thread that owns every MLX call (DESIGN.md §1): it loads the model, warms it up, then runs the
scheduler. Other threads talk to it only through `submit`, `cancel` and the state it publishes.
"""

from __future__ import annotations

import enum
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

from mlxd.engine.images import ImageEncoder
from mlxd.engine.request import GenerationRequest
from mlxd.engine.scheduler import ModelRuntime, Scheduler
from mlxd.errors import InvalidRequest, ModelLoadError, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)


class WorkerState(enum.Enum):
    LOADING = "loading"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass
class WorkerOptions:
    model_path: Path
    dtype: str = "auto"
    max_queue: int = 64             # requests waiting for the worker; more get RESOURCE_EXHAUSTED
    prefill_chunk_size: int = 512
    max_batch_size: int = 16        # sequences decoding together
    kv_cache_bytes: int = 0         # KV-cache budget for admission; 0 = half the memory left after the weights
    prefix_cache_bytes: int = 2 << 30   # KV snapshots of earlier prompts kept for reuse; 0 = off
    image_cache_bytes: int = 256 << 20   # encoded images kept for the next request (vision-language models)
    max_stream_backlog: int = 256   # events a request's reader may leave untaken before its row pauses
    stalled_stream_seconds: float = 60.0   # a row paused this long (its client stopped reading) is cancelled


@dataclass(frozen=True)
class MlxMemory:
    active_bytes: int = 0
    cache_bytes: int = 0
    peak_bytes: int = 0
    prefix_cache_bytes: int = 0      # the prefix cache's KV snapshots, part of active_bytes


class Worker:
    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.state = WorkerState.LOADING
        self.loaded: Any = None          # mlxd.loading.loader.LoadedModel once SERVING
        self.tokenizer: Any = None       # mlxd.loading.tokenizer.Tokenizer once SERVING
        self.device = ""                 # the MLX device the worker runs on, once loading started
        self.load_error: BaseException | None = None
        self.last_progress = time.monotonic()
        self.memory = MlxMemory()        # published by the worker for GetModelInfo (other threads make no MLX calls)
        self._inbox: queue.SimpleQueue[GenerationRequest] = queue.SimpleQueue()
        self._live: dict[str, GenerationRequest] = {}
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle (called from the main thread) --------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mlx-worker", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the model is loaded and warmed up; raise ModelLoadError when loading failed."""
        if not self.ready.wait(timeout):
            raise ModelLoadError(f"model did not load within {timeout} s")
        if self.load_error is not None:
            raise self.load_error if isinstance(self.load_error, ModelLoadError) else \
                ModelLoadError(f"{type(self.load_error).__name__}: {self.load_error}")

    def begin_drain(self) -> None:
        if self.state is WorkerState.SERVING:
            self.state = WorkerState.DRAINING

    def live_count(self) -> int:
        with self._lock:
            return len(self._live)

    def cancel_all(self, reason: str) -> None:
        with self._lock:
            requests = list(self._live.values())
        for request in requests:
            request.cancel.cancel(reason)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- requests (called from gRPC threads) --------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> None:
        with self._lock:
            if self.state is not WorkerState.SERVING:
                raise Unavailable(f"the daemon is {self.state.value}, not serving")
            if request.request_id in self._live:
                raise InvalidRequest(f"request_id {request.request_id!r} is already in use by a live request")
            # Live requests are the active ones plus those waiting; only the waiting ones are bounded here.
            if len(self._live) >= self.options.max_queue + self.options.max_batch_size:
                raise ResourceExhausted(f"the request queue is full ({self.options.max_queue} waiting)")
            self._live[request.request_id] = request
        self._inbox.put(request)

    def cancel(self, request_id: str, reason: str = "cancel rpc") -> bool:
        with self._lock:
            request = self._live.get(request_id)
        if request is None:
            return False
        request.cancel.cancel(reason)
        return True

    def _finished(self, request: GenerationRequest) -> None:
        with self._lock:
            if self._live.get(request.request_id) is request:
                del self._live[request.request_id]

    # -- the thread ---------------------------------------------------------------------------------------------

    def _run(self) -> None:
        self.device = str(mx.default_device())
        mx.set_default_stream(mx.new_stream(mx.default_device()))
        try:
            scheduler = self._load()
        except BaseException as error:  # reported by wait_ready; the daemon exits with this reason
            self.load_error = error
            self.state = WorkerState.FAILED
            self.ready.set()
            return
        self._publish_memory(scheduler)
        self.state = WorkerState.SERVING
        self.ready.set()
        while True:
            self._take_inbox(scheduler, block=not scheduler.has_work())
            if self._stop.is_set() and not scheduler.has_work():
                break
            if scheduler.has_work():
                scheduler.step()
            self.last_progress = time.monotonic()
            self._publish_memory(scheduler)
        self.state = WorkerState.STOPPED

    def _publish_memory(self, scheduler: Scheduler) -> None:
        # After every step and idle wait (the three reads take ~0.1 µs), as one frozen object: no torn reads.
        self.memory = MlxMemory(mx.get_active_memory(), mx.get_cache_memory(), mx.get_peak_memory(),
                                scheduler.prefix_cache.bytes_used)

    def _take_inbox(self, scheduler: Scheduler, block: bool) -> None:
        try:
            request = self._inbox.get(timeout=0.05) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        taken = [request]
        while True:
            try:
                taken.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        scheduler.waiting.extend(taken)

    def _load(self) -> Scheduler:
        from mlxd.engine.fault_injection import inject_from_env
        from mlxd.engine.warmup import warm_up
        from mlxd.loading.model_source import load_model_and_tokenizer

        started = time.monotonic()
        # Test hook: hold the loading state long enough for a test to observe NOT_SERVING.
        time.sleep(float(os.environ.get("MLXD_TEST_LOAD_DELAY_SECONDS", "0")))
        path = self.options.model_path
        self.loaded, self.tokenizer = load_model_and_tokenizer(path, self.options.dtype)
        eos = frozenset(self.tokenizer.eos_token_ids) | frozenset(self.loaded.eos_token_ids)
        model = self.loaded.model
        encoder = ImageEncoder(model, self.options.image_cache_bytes) if hasattr(model, "encode_images") else None
        runtime = ModelRuntime(model, self.tokenizer.decode, self.tokenizer.byte_fallback_ids, eos,
                               self.loaded.context_length, self.loaded.vocab_size, encoder)
        warm_up(runtime)
        inject_from_env(runtime)
        log.info("model loaded and warmed up in %.2f s: %s", time.monotonic() - started, self.loaded.load_note)
        scheduler = Scheduler(runtime, self.options.prefill_chunk_size, self.options.max_batch_size,
                              self.options.kv_cache_bytes, self.options.prefix_cache_bytes,
                              on_finished=self._finished)
        log.info("decoding up to %d sequences together within a KV-cache budget of %d MiB; prefix cache %d MiB",
                 self.options.max_batch_size, scheduler.budget.budget_bytes >> 20,
                 self.options.prefix_cache_bytes >> 20)
        return scheduler
