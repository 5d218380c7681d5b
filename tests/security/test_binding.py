"""Where the daemon may listen: loopback and unix sockets freely; the network only with TLS or a token."""

import socket
import subprocess
import sys

import pytest

from mlxd.service.listen import ListenError, check_policy, is_local
from mlxd_client import Client
from tests.helpers.daemon_process import FIXTURES, daemon_env, start_daemon

pytestmark = pytest.mark.process

LLAMA = FIXTURES / "parity" / "llama"


@pytest.mark.parametrize("addr,local", [
    ("127.0.0.1:0", True), ("127.8.9.1:50051", True), ("localhost:50051", True), ("[::1]:50051", True),
    ("unix:/tmp/x.sock", True), ("unix:", True),
    ("0.0.0.0:50051", False), ("[::]:50051", False), (":50051", False), ("10.1.2.3:50051", False),
    ("example.com:50051", False), ("unix-abstract:mlxd", False),
])
def test_is_local(addr, local):
    assert is_local(addr) is local


def test_policy_needs_tls_or_token_for_the_network():
    check_policy("0.0.0.0:1", tls=True, token=False)
    check_policy("0.0.0.0:1", tls=False, token=True)
    check_policy("127.0.0.1:1", tls=False, token=False)
    with pytest.raises(ListenError, match="--tls-cert"):
        check_policy("0.0.0.0:1", tls=False, token=False)


def _serve(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlxd", "serve", "--model", str(LLAMA), *args],
                          capture_output=True, text=True, env=daemon_env(), timeout=120, cwd=tmp_path)


def _refused(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1 and proc.stdout == ""
    return proc.stderr.strip().splitlines()[-1]


def test_all_interfaces_without_tls_or_token_is_refused(tmp_path):
    last = _refused(_serve(tmp_path, "--addr", "0.0.0.0:0"))
    assert last.startswith("mlxd: 0.0.0.0:0 is not a loopback address") and "--auth-token-file" in last


@pytest.mark.parametrize("content", ["short", "has a space in the middle!!", ""])
def test_unusable_token_file_is_refused(tmp_path, content):
    token = tmp_path / "token"
    token.write_text(content)
    last = _refused(_serve(tmp_path, "--addr", "127.0.0.1:0", "--auth-token-file", str(token)))
    assert last.startswith(f"mlxd: --auth-token-file {token}")


def test_missing_tls_files_are_refused(tmp_path):
    not_pem = tmp_path / "cert.txt"
    not_pem.write_text("hello")
    last = _refused(_serve(tmp_path, "--addr", "127.0.0.1:0", "--tls-cert", str(not_pem), "--tls-key",
                           str(tmp_path / "missing.key")))
    assert "--tls-cert" in last and "not a PEM file" in last
    last = _refused(_serve(tmp_path, "--addr", "127.0.0.1:0", "--tls-cert", str(not_pem)))
    assert "--tls-key" in last


def test_live_socket_is_not_taken_over_but_a_stale_one_is(tmp_path):
    path = tmp_path / "s.sock"
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    holder.bind(str(path))
    holder.listen()
    last = _refused(_serve(tmp_path, "--addr", f"unix:{path}"))
    assert "another process is listening" in last and path.is_socket()
    holder.close()  # the file stays, and nothing answers on it any more
    daemon = start_daemon(LLAMA, addr=f"unix:{path}", workdir=tmp_path)
    with Client(daemon.addr) as client:
        assert client.health() == "SERVING"
    assert daemon.stop() == 0
