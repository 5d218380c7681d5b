"""The one place where mlxd's errors become gRPC status codes (DESIGN.md §2, §4.6)."""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from mlxd import errors

log = logging.getLogger(__name__)

_CODES: dict[type[BaseException], grpc.StatusCode] = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unsupported: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.InternalError: grpc.StatusCode.INTERNAL,
}


def status_for(error: BaseException) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext, error: BaseException) -> NoReturn:
    """End the RPC with the status that belongs to error (raises, as context.abort does)."""
    code = status_for(error)
    if code is grpc.StatusCode.INTERNAL and not isinstance(error, errors.InternalError):
        log.error("internal error", exc_info=error)
    await context.abort(code, str(error) or type(error).__name__)
    raise AssertionError("context.abort returned")   # it raises; this tells type checkers so
