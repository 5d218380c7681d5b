"""What the service hands the worker (a request) and what the worker hands back (events).

Plain data only: no MLX, no protobuf, so both sides and the tests can build them freely.
"""

from __future__ import annotations

import enum
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mlxd.engine.constraint import TokenConstraint
from mlxd.generation.params import SamplingParams
from mlxd.generation.stops import StopStrings


class FinishReason(enum.Enum):
    STOP = "stop"                    # end-of-sequence or a stop token id
    LENGTH = "length"                # max_tokens or the context length
    STOP_SEQUENCE = "stop_sequence"  # a stop string matched
    CANCELLED = "cancelled"          # Cancel RPC or shutdown


class CancelToken:
    """A flag set from any thread (client gone, deadline, Cancel RPC, shutdown); the worker polls it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str = ""

    def cancel(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True)
class PromptImage:
    """An image of the prompt: its preprocessed pixels and where its image tokens sit in prompt_ids."""

    position: int                 # index of its first image token
    length: int                   # number of image tokens
    pixels: np.ndarray            # float32 [3, H, W], normalized
    digest: str                   # content hash of the encoded bytes, the key of the worker's embedding cache


class EventSink(Protocol):
    """One request's events on their way from the worker thread to whoever streams them (the service).

    The worker calls `put` (it never blocks) and reads `backlog` to hold back a request whose reader fell behind
    (backpressure); the reader takes events on its own thread or event loop.
    """

    def put(self, event: Event) -> None: ...

    def backlog(self) -> int:
        """Events put and not yet taken by the reader."""
        ...


class EventQueue:
    """The plain EventSink: a thread-safe queue the reader polls (warm-up, in-process use, tests)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def put(self, event: Event) -> None:
        self._queue.put(event)

    def backlog(self) -> int:
        return self._queue.qsize()

    def get(self, timeout: float | None = None) -> Event:
        """The next event; raises queue.Empty after `timeout` seconds without one."""
        return self._queue.get(timeout=timeout)

    def get_nowait(self) -> Event:
        return self._queue.get_nowait()

    def empty(self) -> bool:
        return self._queue.empty()

    def drain(self) -> list[Event]:
        """Every event queued now, in order."""
        events = []
        while True:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                return events


@dataclass
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    max_tokens: int = 0                     # 0 = until the context is full
    stops: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_logprobs: bool = False
    images: tuple[PromptImage, ...] = ()    # in prompt order; spans never overlap
    deadline: float | None = None           # time.monotonic() value
    constraint: TokenConstraint | None = None  # the tokens allowed at each step (a grammar); one per request
    speculation: int | None = None          # most drafted tokens per step: 0 = never, None = the daemon's setting
    skip_special_tokens: bool = False       # special tokens stay out of the text (they still count and stream ids)
    cancel: CancelToken = field(default_factory=CancelToken)
    events: EventSink = field(default_factory=EventQueue)
    submitted_at: float = field(default_factory=time.monotonic)
    # Built with the request, by whoever prepares it (the service, off the worker thread): 256 stops of 1,024
    # characters take ~0.3 s of Python to compile.
    compiled_stops: StopStrings = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.compiled_stops = StopStrings(self.stops)

    def deadline_passed(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


@dataclass
class TopLogprob:
    token_id: int
    logprob: float


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[TopLogprob] = field(default_factory=list)


@dataclass
class TokenEvent:
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Timings:
    queue_seconds: float = 0.0
    time_to_first_token_seconds: float = 0.0
    prefill_tokens_per_second: float = 0.0
    decode_tokens_per_second: float = 0.0
    total_seconds: float = 0.0


@dataclass
class FinalEvent:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    drafted_tokens: int = 0            # speculative decoding: tokens drafted, and of them accepted
    accepted_draft_tokens: int = 0
    matched_stop: str = ""
    stop_token_id: int = -1
    timings: Timings = field(default_factory=Timings)
    peak_memory_bytes: int = 0
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    constraint_complete: bool = False  # the request's constraint accepted the whole output


@dataclass
class ErrorEvent:
    error: BaseException


Event = TokenEvent | FinalEvent | ErrorEvent
