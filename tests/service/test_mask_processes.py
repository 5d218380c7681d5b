"""`serve --mask-processes 2` over a real gRPC channel: the mask processes start with the daemon, constrained
streams decoding together (their masks filled partly in the mask processes) give the tokens the daemon without them
gives, and the mask processes end with the daemon, even when it is killed."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlxd_client import Client, pb
from tests.helpers.daemon_process import start_daemon
from tests.service.conftest import LLAMA

pytestmark = pytest.mark.process

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}, "pet": {"enum": ["cat", "dog"]},
                                           "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
          "required": ["n", "pet", "tags"]}
CONSTRAINTS = [pb.Constraint(json_schema=json.dumps(SCHEMA), max_whitespace=1),
               pb.Constraint(json_object=pb.JsonObject(), max_whitespace=1),
               pb.Constraint(regex="([a-z]{1,8} ){2,6}[0-9]{1,3}"), None]


def _requests() -> list[dict]:
    """Ten streams, eight constrained; greedy and seeded."""
    return [dict(tokens=[1, 5 + i, 9, 14], max_tokens=48, constraint=CONSTRAINTS[i % len(CONSTRAINTS)],
                 **(dict(temperature=0.9, seed=i) if i % 2 else dict(temperature=0.0))) for i in range(10)]


def _together(addr: str) -> list[list[int]]:
    def run(request: dict) -> list[int]:
        with Client(addr) as client:
            kwargs = {k: v for k, v in request.items() if v is not None}
            return client.complete(**kwargs, timeout=120).token_ids

    with ThreadPoolExecutor(10) as pool:
        return list(pool.map(run, _requests()))


def _mask_processes(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"mlxd.constraints.mask_worker" in cmdline:
            children.append(int(stat.parent.name))
    return children


def _gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_streams_with_mask_processes_equal_those_without_and_the_processes_end_with_the_daemon(daemon, tmp_path):
    pooled = start_daemon(LLAMA, "--mask-processes", "2", workdir=tmp_path)
    try:
        # Started with the daemon (service/constraints.py prepare), before any constrained request.
        assert len(_mask_processes(pooled.proc.pid)) == 2
        assert "token tables built" in pooled.stderr()
        first = _together(pooled.addr)
        time.sleep(1.0)
        assert len(_mask_processes(pooled.proc.pid)) == 2
        assert "masks are filled in 2 processes" in pooled.stderr() and "mask process is lost" not in pooled.stderr()
        assert _together(pooled.addr) == first == _together(daemon.addr)
        assert _mask_processes(daemon.proc.pid) == []  # auto, the default, starts none on a CPU host
        processes = _mask_processes(pooled.proc.pid)
    finally:
        pooled.stop(signal.SIGKILL)
    assert _gone(processes, 10), "the mask processes outlived their daemon"
