"""Send a fuzzed Call over a generic channel and judge its outcome against the documented status codes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc

from mlxd_client import pb
from tests.fuzz.hostile_requests import Call
from tests.helpers.daemon_process import Daemon, start_daemon

DEADLINE_SECONDS = 30.0   # far beyond any request here: reaching it means a hang
MAX_RESPONSES = 6         # then the stream is cancelled by the client, which is a path worth fuzzing too
DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
              grpc.StatusCode.RESOURCE_EXHAUSTED}


def run(channel: grpc.Channel, call: Call) -> grpc.StatusCode | None:
    """Send call as raw bytes; its status code, or None when the client cancelled a stream that was healthy.
    AssertionError when the daemon answered outside DOCUMENTED (INTERNAL, UNKNOWN, DEADLINE_EXCEEDED...)."""
    try:
        if not call.streaming:
            channel.unary_unary(call.method)(call.request, timeout=DEADLINE_SECONDS)
            return grpc.StatusCode.OK
        responses = channel.unary_stream(call.method)(call.request, timeout=DEADLINE_SECONDS)
        last = None
        for count, data in enumerate(responses, 1):
            last = pb.GenerateResponse.FromString(data)
            if count == MAX_RESPONSES and not last.HasField("final"):
                responses.cancel()
                return None
        assert last is not None and last.HasField("final"), f"the stream ended without a final message: {last}"
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        if error.code() not in DOCUMENTED:
            raise AssertionError(f"{error.code()}: {error.details()}") from None
        assert error.details(), "a failed request must say why"
        return error.code()


@contextlib.contextmanager
def fuzzed_daemon(model: Path, workdir: Path, *flags: str) -> Iterator[tuple[Daemon, grpc.Channel]]:
    """A daemon for a fuzz module and a raw channel to it; on the way out it must exit 0 with no traceback."""
    daemon = start_daemon(model, *flags, workdir=workdir)
    channel = grpc.insecure_channel(daemon.addr)
    try:
        yield daemon, channel
    finally:
        channel.close()
    assert daemon.stop() == 0, daemon.stderr()
    assert "Traceback" not in daemon.stderr(), daemon.stderr()
