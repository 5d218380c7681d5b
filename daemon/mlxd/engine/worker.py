"""The one thread that owns every MLX call (DESIGN.md §1): it loads the model, warms it up, then runs the
scheduler. Other threads talk to it only through `submit`, `cancel` and the state it publishes.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlx.core as mx

from mlxd.engine.request import ErrorEvent, FinalEvent, GenerationRequest
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Routed, Scheduler, SchedulerOptions
from mlxd.errors import InternalError, InvalidRequest, ModelLoadError, ResourceExhausted, Unavailable
from mlxd.models import ops

if TYPE_CHECKING:
    from mlxd.loading.loader import LoadedModel
    from mlxd.loading.tokenizer import Tokenizer

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
    prefill_chunk_size: int = 0     # prompt tokens per prefill step; 0 = the loaded kernels' (ops.prefill_chunk)
    max_batch_size: int = 16        # sequences decoding together
    kv_cache_bytes: int = 0         # KV-cache budget for admission; 0 = half the memory left after the weights
    kv_cache_sharing: int = 1       # processes whose caches share the device (tensor-parallel ranks on one device)
    prefix_cache_bytes: int = 2 << 30   # KV snapshots of earlier prompts kept for reuse; 0 = off
    image_cache_bytes: int = 256 << 20   # encoded images kept for the next request (vision-language models)
    max_stream_backlog: int = 256   # undelivered events at which a request's row pauses (backpressure); 0 = never
    stalled_stream_seconds: float = 60.0  # a request paused this long (its client reads nothing) is cancelled
    speculate: str = ""             # "ngram": speculative decoding by prompt lookup; "": off
    speculate_depth: int = 0        # the most tokens drafted per row per step; 0: the model's (speculation_depth)
    speculate_adaptive: bool = True  # False: always speculate_depth
    draft_model_path: Path | None = None  # speculative decoding by this model (the target's vocabulary)
    mask_processes: int = 0         # processes filling constrained rows' masks beside the worker's; 0 none, -1 auto

    def scheduler_options(self) -> SchedulerOptions:
        """The scheduler's options (a prefill chunk of 0: the backend's, models/ops.py prefill_chunk; a speculation
        depth of 0 is the model's, set once it is loaded: ModelRuntime.speculation_depth)."""
        return SchedulerOptions(self.prefill_chunk_size or ops.prefill_chunk(), self.max_batch_size,
                                self.kv_cache_bytes, self.prefix_cache_bytes, self.max_stream_backlog,
                                self.stalled_stream_seconds,
                                speculate=self.speculate, speculate_depth=self.speculate_depth,
                                speculate_adaptive=self.speculate_adaptive, kv_budget_sharing=self.kv_cache_sharing,
                                pipelined=mx.default_device().type != mx.cpu)


@dataclass(frozen=True)
class MlxMemory:
    active_bytes: int = 0
    cache_bytes: int = 0
    peak_bytes: int = 0
    prefix_cache_bytes: int = 0      # the prefix cache's KV snapshots, part of active_bytes


# Builds the runtime, warmed up, on the worker thread once it started: the model's load, or a test's fake model.
RuntimeFactory = Callable[["Worker"], ModelRuntime]


class Worker:
    def __init__(self, options: WorkerOptions, load: RuntimeFactory | None = None) -> None:
        self.options = options
        self._load_runtime = load if load is not None else load_runtime
        self.state = WorkerState.LOADING
        self.loaded: LoadedModel | None = None      # once SERVING (None with a test's fake model)
        self.tokenizer: Tokenizer | None = None     # once SERVING
        self.device = ""                 # the MLX device the worker runs on, once loading started
        self.load_error: BaseException | None = None
        self.fatal: str | None = None    # why the worker can serve no more (another rank failed); the daemon exits 1
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

    def fail(self, reason: str) -> None:
        """Serve no more, from any thread, even while the worker thread is blocked (in a collective whose other
        rank is gone): a load in progress fails with `reason`; every live stream ends UNAVAILABLE now."""
        if self.fatal is not None:
            return
        self.fatal = reason
        if self.state is WorkerState.LOADING:
            self.load_error = ModelLoadError(reason)
            self.state = WorkerState.FAILED
            self.ready.set()
            return
        self.state = WorkerState.FAILED
        with self._lock:
            stranded = list(self._live.values())
        self.deliver([(r, ErrorEvent(Unavailable(reason))) for r in stranded])

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
            # Live requests are the active ones plus those waiting; only the waiting ones are bounded here. A
            # cancelled one is on its way out (the next step ends it) and holds no slot.
            live = sum(1 for r in self._live.values() if not r.cancel.is_set)
            if live >= self.options.max_queue + self.options.max_batch_size:
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

    def deliver(self, routed: list[Routed]) -> None:
        """Hand each event to its request's sink; a request's id is free before its last event goes out."""
        for request, event in routed:
            if isinstance(event, (FinalEvent, ErrorEvent)):
                if isinstance(event, FinalEvent):
                    event.peak_memory_bytes = mx.get_peak_memory()
                with self._lock:
                    if self._live.get(request.request_id) is request:
                        del self._live[request.request_id]
            request.events.put(event)

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
        try:
            self._serve(scheduler)
        finally:
            # However the loop ended, nobody will serve what is still live: tell every stream at once.
            if self.state is not WorkerState.STOPPED:
                self.state = WorkerState.FAILED
                log.critical("the MLX worker thread stopped serving")
            with self._lock:
                stranded = list(self._live.values())
            self.deliver([(r, ErrorEvent(Unavailable("the MLX worker thread is gone"))) for r in stranded])

    def _serve(self, scheduler: Scheduler) -> None:
        while True:
            idle = not scheduler.has_work()
            self._take_inbox(scheduler, block=idle)
            if self._stop.is_set() and not scheduler.has_work():
                break
            if scheduler.has_work():
                if idle:
                    mx.reset_peak_memory()  # peak memory then covers the requests that run together from here
                self.deliver(self._step(scheduler))
                if not scheduler.has_work():
                    mx.clear_cache()  # give cache memory back once nothing runs
            self.last_progress = time.monotonic()
            self._publish_memory(scheduler)
        self.state = WorkerState.STOPPED

    def _step(self, scheduler: Scheduler) -> list[Routed]:
        """One scheduler step; a bug escaping it ends the requests the scheduler held, never the thread."""
        try:
            return scheduler.step()
        except Exception as error:
            log.error("the scheduler failed; ending the %d requests it held", len(scheduler.requests()),
                      exc_info=error)
            return scheduler.abort(InternalError(f"{type(error).__name__}: {error}"))

    def _publish_memory(self, scheduler: Scheduler) -> None:
        # After every step and idle wait (the three reads take ~0.1 µs), as one frozen object: no torn reads.
        self.memory = MlxMemory(mx.get_active_memory(), mx.get_cache_memory(), mx.get_peak_memory(),
                                scheduler.prefix_cache.bytes_used)

    def _take_inbox(self, scheduler: Scheduler, block: bool) -> None:
        try:
            request = self._inbox.get(timeout=0.05) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            scheduler.add(request)
            try:
                request = self._inbox.get_nowait()
            except queue.Empty:
                break

    def _load(self) -> Scheduler:
        started = time.monotonic()
        runtime = self._load_runtime(self)
        log.info("model loaded and warmed up in %.2f s%s", time.monotonic() - started,
                 f": {self.loaded.load_note}" if self.loaded is not None else "")
        options = self.options.scheduler_options()
        options.speculate_depth = runtime.speculation_depth(options.speculate_depth)
        scheduler = Scheduler(runtime, options)
        log.info("decoding up to %d sequences together within a KV-cache budget of %d MiB; prompts in chunks of %d "
                 "tokens; prefix cache %d MiB", self.options.max_batch_size, scheduler.budget.budget_bytes >> 20,
                 options.prefill_chunk_size, self.options.prefix_cache_bytes >> 20)
        return scheduler


def load_runtime(worker: Worker) -> ModelRuntime:
    """Load the model and tokenizer the worker's options name, publish them for the service, and warm up."""
    from mlxd.loading.model_source import load_model_and_tokenizer

    options = worker.options
    worker.loaded, worker.tokenizer = load_model_and_tokenizer(options.model_path, options.dtype)
    return ready(worker, ModelRuntime.from_loaded(worker.loaded, worker.tokenizer, options.image_cache_bytes))


def ready(worker: Worker, runtime: ModelRuntime) -> ModelRuntime:
    """The runtime given its draft model (whole, on this process: with several ranks, rank 0's drafts travel
    with each verify step), then warmed up."""
    from mlxd.engine.warmup import warm_up
    from mlxd.loading.model_source import load_draft_model

    options = worker.options
    if options.draft_model_path is not None:
        assert worker.tokenizer is not None, "the target's tokenizer is loaded first: the draft model must match it"
        runtime.draft_model = load_draft_model(options.draft_model_path, options.dtype, worker.tokenizer)
    depth = runtime.speculation_depth(options.speculate_depth)
    warm_up(runtime, speculate=options.speculate, speculate_depth=depth,
            batch_rows=options.max_batch_size)
    return runtime
