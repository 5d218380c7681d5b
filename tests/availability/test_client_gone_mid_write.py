"""A client that ends its call while a message is being written: grpc.aio raises its internal ExecuteBatchError
from the write instead of cancelling the handler's task (a race a CI soak met). The writer turns that into
ClientGone (a Cancelled): no INTERNAL status, no traceback in the log, and the request is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from mlxd.errors import Cancelled
from mlxd.service.streaming import ClientGone, StreamWriter
from mlxd_proto.v1 import inference_pb2 as pb


class BatchError(Exception):
    """What grpc's core raises for a write to a call that has ended (grpc._cython.cygrpc.ExecuteBatchError)."""


class EndedCall:
    def __init__(self, cancelled: bool, done: bool) -> None:
        self._cancelled, self._done = cancelled, done

    async def write(self, message: pb.GenerateResponse) -> None:
        raise BatchError("execute batch failed")

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
