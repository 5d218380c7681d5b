"""Process faults: the daemon killed under a stream, and SIGTERM with several streams in flight."""

import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from mlxd_client import Client, MlxdClientError, pb
from tests.helpers.daemon_process import FIXTURES, start_daemon

pytestmark = [pytest.mark.process, pytest.mark.stress]

LLAMA = FIXTURES / "parity" / "llama"


def test_sigkill_mid_stream_gives_unavailable(tmp_path):
    # A hang would end at the call's deadline with DEADLINE_EXCEEDED. How fast UNAVAILABLE comes (the issue
    # asks for < 1 s) is measured by tests/stress/process_faults.py, not asserted here.
    daemon = start_daemon(LLAMA, workdir=tmp_path)
    with Client(daemon.addr) as client:
        stream = client.generate(tokens=[5] * 4, max_tokens=0, ignore_eos=True, timeout=30)
        assert next(stream).HasField("chunk")
        daemon.proc.kill()
        with pytest.raises(MlxdClientError) as info:
            for _ in stream:
                pass
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        daemon.proc.wait(5)
        with pytest.raises(MlxdClientError) as info:
            client.complete("hi", max_tokens=1, timeout=10)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE


def _streams(addr: str, count: int, max_tokens: int) -> tuple[list[threading.Thread], list, threading.Event]:
    """Start count streams, each in its own thread; results get the Final or the error of each, and the event
    is set when the first chunk of any arrives (only one stream is active at a time; the others queue)."""
    results: list = [None] * count
    streaming = threading.Event()

    def one(i: int) -> None:
        with Client(addr) as client:
            try:
                for response in client.generate(tokens=[5 + i] * 4, max_tokens=max_tokens, ignore_eos=True,
                                                temperature=0.0, timeout=60):
                    streaming.set()
                    if response.HasField("final"):
                        results[i] = response.final
            except MlxdClientError as error:
                results[i] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    return threads, results, streaming


@pytest.mark.parametrize("grace, max_tokens, finish", [
    ("30", 100, pb.FINISH_REASON_LENGTH),      # all four finish within the grace period, queued ones included
    ("0.3", 0, pb.FINISH_REASON_CANCELLED),    # none can (0 = up to the context length): CANCELLED at the deadline
])
def test_sigterm_with_four_streams_in_flight(tmp_path, grace, max_tokens, finish):
    daemon = start_daemon(LLAMA, "--grace-period", grace, "--max-queue", "4", workdir=tmp_path)
    sock = Path(daemon.addr[len("unix:"):])
    threads, results, streaming = _streams(daemon.addr, 4, max_tokens)
    assert streaming.wait(30)
    time.sleep(0.3)  # the three other requests are submitted by now (they were sent together with the first)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(40) == 0, daemon.stderr()
    for t in threads:
        t.join(30)
    assert all(isinstance(r, pb.Final) for r in results), results
    assert [r.finish_reason for r in results] == [finish] * 4
    if finish == pb.FINISH_REASON_LENGTH:
        assert [r.usage.completion_tokens for r in results] == [max_tokens] * 4
    assert not sock.exists()
