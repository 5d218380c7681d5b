"""How the scheduler ends a request that never ran or failed: the event for a gone waiting request, and the error
a failure reaches the client as."""

from __future__ import annotations

import logging
import re

import mlx.core as mx

from mlxd.constraints.errors import ConstraintError, as_request_error
from mlxd.engine.request import ErrorEvent, Event, FinalEvent, FinishReason, GenerationRequest
from mlxd.errors import DeadlineExceeded, InternalError, MlxdError, ResourceExhausted

log = logging.getLogger("mlxd.engine.scheduler")

# How MLX says an allocation failed: its allocator's "[malloc] Unable to allocate N bytes.", Metal's "Resource limit
# (N) exceeded", CUDA's "cudaMallocAsync(...) failed: out of memory" (an H100 serving three 8B daemons at once).
_OUT_OF_MEMORY = re.compile(r"out of memory|unable to allocate|resource limit \(\d+\) exceeded", re.IGNORECASE)


def gone(request: GenerationRequest) -> Event | None:
    """The event that ends a waiting request whose deadline passed or whose client cancelled, else None."""
    if request.deadline_passed():
        return ErrorEvent(DeadlineExceeded(f"request {request.request_id!r} expired in the queue"))
    if request.cancel.is_set:
        return FinalEvent(FinishReason.CANCELLED, len(request.prompt_ids), 0)
    return None


def as_mlxd_error(error: Exception, request: GenerationRequest) -> MlxdError:
    if isinstance(error, ConstraintError):
        return as_request_error(error)
    if isinstance(error, MlxdError):
        return error
    if out_of_memory(error):
        # Not a bug: the batch (or the prompt) needed more device memory than was free (`release_memory`).
        log.warning("request %r: the device ran out of memory: %s", request.request_id, error)
        return ResourceExhausted(f"the device ran out of memory ({error}); the daemon goes on serving: lower "
                                 "--kv-cache-mb or --max-batch-size to leave room for the steps' own arrays")
    # A bug, not a bad request: log it with its traceback. %r: client text cannot forge log lines.
    log.error("request %r failed", request.request_id, exc_info=error)
    return InternalError(f"{type(error).__name__}: {error}")


def release_memory(error: Exception) -> None:
    """After a failed allocation, once the scheduler has dropped the failed rows' caches: MLX's cache of freed
    buffers (theirs among them) goes back to the device, so the next step starts with all of it. Once a failure,
    not once a request of it."""
    if out_of_memory(error):
        mx.clear_cache()


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is a failed allocation (the device's or the host's), not a bug."""
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError)
                                               and _OUT_OF_MEMORY.search(str(error)) is not None)
