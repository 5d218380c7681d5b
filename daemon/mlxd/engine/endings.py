"""How the scheduler ends a request that never ran or failed: the event for a gone waiting request, and the error
a failure reaches the client as."""

from __future__ import annotations

import logging

from mlxd.constraints.errors import ConstraintError, as_request_error
from mlxd.engine.request import ErrorEvent, Event, FinalEvent, FinishReason, GenerationRequest
from mlxd.errors import DeadlineExceeded, InternalError, MlxdError

log = logging.getLogger("mlxd.engine.scheduler")


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
    # A bug, not a bad request: log it with its traceback. %r: client text cannot forge log lines.
    log.error("request %r failed", request.request_id, exc_info=error)
    return InternalError(f"{type(error).__name__}: {error}")
