"""The process contract with a parent (DESIGN.md §3), with `mlxd serve` as a real child process."""

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from mlxd_client import Client, MlxdClientError, pb
from tests.helpers.daemon_process import FIXTURES, daemon_env, daemon_of_a_killed_parent, running, start_daemon

pytestmark = pytest.mark.process

MODEL = FIXTURES / "parity" / "qwen2"


def test_spawn_ready_serve_and_sigterm(tmp_path):
    daemon = start_daemon(MODEL, workdir=tmp_path)
    assert daemon.ready["event"] == "ready" and daemon.ready["pid"] == daemon.proc.pid
    sock = Path(daemon.addr[len("unix:"):])
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    with Client(daemon.addr) as client:
        client.wait_serving(timeout=10)
        result = client.complete("hello", max_tokens=4, temperature=0.0, ignore_eos=True)
        assert result.final.usage.completion_tokens == 4
    assert daemon.stop(signal.SIGTERM) == 0
    assert not sock.exists()


def test_sigterm_lets_an_inflight_stream_finish(tmp_path):
    daemon = start_daemon(MODEL, "--grace-period", "20", workdir=tmp_path)
    with Client(daemon.addr) as client:
        stream = client.generate(tokens=[5] * 8, max_tokens=300, ignore_eos=True, temperature=0.0)
        assert next(stream).HasField("chunk")
        daemon.proc.send_signal(signal.SIGTERM)
        finals = [r.final for r in stream if r.HasField("final")]
        assert finals[0].finish_reason == pb.FINISH_REASON_LENGTH
        assert finals[0].usage.completion_tokens == 300
    assert daemon.proc.wait(20) == 0


def test_grace_deadline_cancels_the_rest(tmp_path):
    daemon = start_daemon(MODEL, "--grace-period", "0.5", workdir=tmp_path)
    with Client(daemon.addr) as client:
        stream = client.generate(tokens=[5] * 8, max_tokens=2000, ignore_eos=True, temperature=0.0)
        assert next(stream).HasField("chunk")
        daemon.proc.send_signal(signal.SIGTERM)
        finals = [r.final for r in stream if r.HasField("final")]
        assert finals[0].finish_reason == pb.FINISH_REASON_CANCELLED
    assert daemon.proc.wait(20) == 0


def test_load_failure_exits_nonzero_with_a_one_line_reason(tmp_path):
    missing = tmp_path / "no-such-model"
    proc = subprocess.run([sys.executable, "-m", "mlxd", "serve", "--model", str(missing), "--addr",
                           f"unix:{tmp_path / 's.sock'}"], capture_output=True, text=True, env=daemon_env(),
                          timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert str(missing) in last or "no-such-model" in last
    assert proc.stdout == ""


def test_unusable_address_exits_nonzero_with_a_one_line_reason(tmp_path):
    addr = f"unix:{tmp_path / 'missing-dir' / 's.sock'}"
    proc = subprocess.run([sys.executable, "-m", "mlxd", "serve", "--model", str(MODEL), "--addr", addr],
                          capture_output=True, text=True, env=daemon_env(), timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"mlxd: cannot listen on {addr}")


def test_daemon_exits_when_its_parent_dies(tmp_path):
    child_pid, killed_at = daemon_of_a_killed_parent(MODEL, tmp_path)
    while time.monotonic() - killed_at < 5:
        if not running(child_pid):
            break
        time.sleep(0.02)
    else:
        os.kill(child_pid, signal.SIGKILL)
        raise AssertionError("the daemon outlived its parent by 5 s")
    # How soon it exits (the issue asks for < 2 s) is measured by tests/stress/process_faults.py, not asserted here.


def test_health_not_serving_until_loaded_then_serving(tmp_path):
    sock = tmp_path / "slow.sock"
    # The test entry point holds the loading state for 3 s (tests/helpers/fault_daemon.py).
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.fault_daemon", "--load-delay", "3", "serve",
                             "--model", str(MODEL), "--addr", f"unix:{sock}"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=daemon_env())
    try:
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with Client(f"unix:{sock}") as client:
            assert client.health() == "NOT_SERVING"
            with pytest.raises(MlxdClientError) as info:
                client.complete("hi", max_tokens=1)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            client.wait_serving(timeout=60)
            assert client.health() == "SERVING"
            assert b'"ready"' in proc.stdout.readline()
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
