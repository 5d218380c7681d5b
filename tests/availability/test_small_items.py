"""Issue 15 item 9: a long expected_model is quoted by a bounded prefix; a unix socket is refused in a directory
that others may write without the sticky bit, and a socket file that replaced ours is not removed at exit."""

import os
import socket
import subprocess
import sys

import grpc
import pytest

from mlxd_client import Client, MlxdClientError
from tests.availability.inprocess import FakeEngine, serving
from tests.helpers.daemon_process import FIXTURES, daemon_env, start_daemon

pytestmark = pytest.mark.process

LLAMA = FIXTURES / "parity" / "llama"


def test_a_long_expected_model_is_quoted_by_a_bounded_prefix():
    with serving(FakeEngine(tokens=1)) as served, Client(served.addr) as client:
        with pytest.raises(MlxdClientError) as info:
            client.complete("hi", max_tokens=1, expected_model="m" * 20_000)
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION   # not the client's metadata limit
        assert "m" * 200 in info.value.details and "more chars" in info.value.details
        assert len(info.value.details) < 1000


def test_a_socket_in_a_directory_anyone_may_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    proc = subprocess.run([sys.executable, "-m", "mlxd", "serve", "--model", str(LLAMA), "--addr",
                           f"unix:{shared / 's.sock'}"], capture_output=True, text=True, env=daemon_env(),
                          timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "can be written by every user and has no sticky bit" in proc.stderr.strip().splitlines()[-1]
    shared.chmod(0o1777)   # sticky, as /tmp: others cannot rename or remove our socket
    daemon = start_daemon(LLAMA, addr=f"unix:{shared / 's.sock'}", workdir=tmp_path)
    assert daemon.stop() == 0, daemon.stderr()


def test_a_socket_that_replaced_ours_is_not_removed_at_exit(tmp_path):
    path = tmp_path / "s.sock"
    daemon = start_daemon(LLAMA, addr=f"unix:{path}", workdir=tmp_path)
    os.rename(path, tmp_path / "moved.sock")
    theirs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.bind(str(path))
    try:
        assert daemon.stop() == 0, daemon.stderr()
        assert path.is_socket()
        assert "is no longer the socket this daemon created" in daemon.stderr()
    finally:
        theirs.close()
