"""A client that ends its call while a message is being written: grpc.aio raises its internal ExecuteBatchError
from the write instead of cancelling the handler's task (a race a CI soak met). The writer turns that into
ClientGone (a Cancelled): no INTERNAL status, no traceback in the log, and the request is cancelled."""

from __future__ import annotations

import asyncio

import pytest
from grpc._cython import cygrpc

from mlxd.errors import Cancelled
from mlxd.service.streaming import ClientGone, StreamWriter
from mlxd_proto.v1 import inference_pb2 as pb


class BatchError(Exception):
    """Another error from a write, e.g. one raised by a call that has ended."""


class EndedCall:
    def __init__(self, cancelled: bool, done: bool, error: type[Exception] = BatchError) -> None:
        self._cancelled, self._done, self._error = cancelled, done, error

    async def write(self, message: pb.GenerateResponse) -> None:
        raise self._error("execute batch failed")

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._done


async def _write(context: EndedCall) -> None:
    writer = StreamWriter(context, stalled_seconds=60)  # type: ignore[arg-type]
    try:
        await writer.write(pb.GenerateResponse())
    finally:
        writer.close()


@pytest.mark.parametrize("cancelled,done", [(True, False), (False, True), (True, True)])
def test_a_write_to_an_ended_call_is_a_client_gone(cancelled, done):
    with pytest.raises(ClientGone) as caught:
        asyncio.run(_write(EndedCall(cancelled, done)))
    assert isinstance(caught.value, Cancelled)


def test_a_write_failure_on_a_live_call_is_not_hidden():
    with pytest.raises(BatchError):
        asyncio.run(_write(EndedCall(cancelled=False, done=False)))


def test_grpcs_failed_write_batch_is_a_client_gone_before_the_call_says_so():
    # The CI soak's race: the client's end had not reached the context yet (cancelled() and done() were False).
    with pytest.raises(ClientGone):
        asyncio.run(_write(EndedCall(cancelled=False, done=False, error=cygrpc.ExecuteBatchError)))


def test_grpcs_own_log_of_a_client_gone_at_the_end_is_one_info_line():
    """grpc logs a failed last batch (the status after a stream whose client just left) with a traceback; the
    daemon's filter on grpc's logger makes it one INFO line, and lets every other record through unchanged."""
    import logging
    import sys

    from mlxd.service.streaming import ClientGoneAtTheEnd

    def record(error: Exception) -> logging.LogRecord:
        try:
            raise error
        except Exception:
            return logging.LogRecord("grpc._cython.cygrpc", logging.ERROR, __file__, 1, "ExecuteBatchError raised",
                                     None, sys.exc_info())

    gone = record(cygrpc.ExecuteBatchError("batch failed"))
    assert ClientGoneAtTheEnd().filter(gone)
    assert gone.levelno == logging.INFO and gone.exc_info is None and "client left" in gone.getMessage()
    other = record(RuntimeError("something else"))
    assert ClientGoneAtTheEnd().filter(other)
    assert other.levelno == logging.ERROR and other.exc_info is not None
