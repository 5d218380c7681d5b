"""Issue 15 item 6: idle connections cannot lock clients out. The open-file limit is raised at start, connections
are capped below it, idle ones are closed, and the parent has a socket with a cap of its own."""

import time
from pathlib import Path

import grpc
import pytest

from mlxd_client import Client, MlxdClientError
from tests.availability.attacks import health_latencies, idle_connections
from tests.helpers.daemon_process import FIXTURES, start_daemon

pytestmark = [pytest.mark.process, pytest.mark.stress]

LLAMA = FIXTURES / "parity" / "llama"


def _open_file_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc/<pid>/limits")


def test_eleven_hundred_idle_connections_do_not_lock_out_new_clients(tmp_path):
    # Started the way a parent with the common default soft limit (1,024) starts it.
    daemon = start_daemon(LLAMA, workdir=tmp_path, open_files=1024)
    try:
        soft, hard = _open_file_limits(daemon.proc.pid)
        assert soft == hard
        if hard < 2048:
            pytest.skip(f"the hard open-file limit here is {hard}")
        with idle_connections(daemon.addr, 1100):
            health_latencies(daemon.addr, 5)
            with Client(daemon.addr) as client:
                result = client.complete(tokens=[5, 6], max_tokens=2, ignore_eos=True, timeout=30)
                assert result.final.usage.completion_tokens == 2
    finally:
        assert daemon.stop() == 0, daemon.stderr()


def test_a_full_address_leaves_the_parent_its_own_socket_and_idle_connections_close(tmp_path):
    daemon = start_daemon(LLAMA, "--max-connections", "20", "--idle-connection-seconds", "1", workdir=tmp_path)
    parent = daemon.ready["parent_addr"]
    try:
        assert Path(parent[len("unix:"):]).parent.stat().st_mode & 0o777 == 0o700
        with idle_connections(daemon.addr, 40, preface=True):
            time.sleep(0.3)
            with pytest.raises(MlxdClientError) as info:
                health_latencies(daemon.addr, 1, timeout=3)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE    # the cap holds for everyone on addr...
            health_latencies(parent, 5)                               # ...but the parent still gets in
            # Connections without calls are closed after --idle-connection-seconds; then new clients get in.
            deadline = time.monotonic() + 30
            while True:
                try:
                    health_latencies(daemon.addr, 1, timeout=3)
                    break
                except MlxdClientError:
                    assert time.monotonic() < deadline, "idle connections were not closed"
                    time.sleep(0.5)
    finally:
        assert daemon.stop() == 0, daemon.stderr()
    assert not Path(parent[len("unix:"):]).exists()
