"""Health reports a stalled worker: NOT_SERVING while pending work sees no progress for --stall-timeout, then
SERVING again when it recovers; Check answers at once throughout (it never waits on the worker)."""

import threading
import time

import pytest

from mlxd_client import Client, pb
from tests.helpers.daemon_process import FIXTURES, start_daemon

pytestmark = pytest.mark.process

STALL_TOKEN, STALL_SECONDS = 301, 2.5


def test_stalled_worker_is_not_serving_then_recovers(tmp_path):
    daemon = start_daemon(FIXTURES / "parity" / "llama", "--stall-timeout", "0.5", workdir=tmp_path,
                          faults=("--stall-on-token", f"{STALL_TOKEN}:{STALL_SECONDS}"))
    try:
        with Client(daemon.addr) as client:
            finals = []
            stalled = threading.Thread(target=lambda: finals.append(
                client.complete(tokens=[5, STALL_TOKEN], max_tokens=2, ignore_eos=True, timeout=30).final))
            stalled.start()
            seen, slowest, deadline = [], 0.0, time.monotonic() + 30
            while (stalled.is_alive() or not seen or seen[-1] != "SERVING") and time.monotonic() < deadline:
                asked = time.monotonic()
                status = client.health(timeout=5)
                slowest = max(slowest, time.monotonic() - asked)
                if not seen or seen[-1] != status:
                    seen.append(status)
                time.sleep(0.05)
            stalled.join()
            assert seen == ["SERVING", "NOT_SERVING", "SERVING"], seen
            assert slowest < 0.5
            assert finals[0].finish_reason == pb.FINISH_REASON_LENGTH
            assert client.complete("hi", max_tokens=1, timeout=10).final.usage.completion_tokens == 1
    finally:
        assert daemon.stop() == 0, daemon.stderr()
