"""Where the daemon listens, and who may reach it there.

A loopback address or a unix socket reaches only this host (and a unix socket only our user: it is created
0600). Any other address reaches the network, so serving it needs TLS or a bearer token.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc

UNIX_PREFIX = "unix:"


class ListenError(Exception):
    """The address cannot or may not be served; the message is the one-line reason."""


@dataclass
class Listener:
    """What was bound, and what to clean up at exit."""

    addr: str                         # the address clients use ("host:port" with the real port, or "unix:/path")
    socket_path: Path | None = None
    private_dir: Path | None = None   # a directory we created for the socket; removed at exit

    def remove(self) -> None:
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)
        if self.private_dir is not None:
            self.private_dir.rmdir()


def is_local(addr: str) -> bool:
    """True for unix sockets on the file system and loopback TCP; abstract sockets and hostnames other than
    localhost count as remote (an abstract socket has no permissions; a name may resolve to anything)."""
    if addr.startswith(UNIX_PREFIX):
        return True
    if addr.startswith("unix-abstract:"):
        return False
    host = addr.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_policy(addr: str, tls: bool, token: bool) -> None:
    if not is_local(addr) and not (tls or token):
        raise ListenError(f"{addr} is not a loopback address or unix socket; serving it needs --tls-cert/--tls-key "
                          "or --auth-token-file")


def bind(server: grpc.Server, addr: str, credentials: grpc.ServerCredentials | None) -> Listener:
    if addr.startswith(UNIX_PREFIX):
        return _bind_unix(server, addr[len(UNIX_PREFIX):], credentials)
    port = _add_port(server, addr, credentials)
    host = addr.rsplit(":", 1)[0]
    return Listener(f"{host}:{port}")


def _bind_unix(server: grpc.Server, path_text: str, credentials: grpc.ServerCredentials | None) -> Listener:
    private_dir = None
    if path_text:
        path = Path(path_text)
        _remove_stale_socket(path)
    else:
        # "unix:" alone: a socket in a fresh 0700 directory; the ready line tells the parent where.
        private_dir = Path(tempfile.mkdtemp(prefix="mlxd-"))
        path = private_dir / "mlxd.sock"
    old_umask = os.umask(0o177)  # the socket file is created 0600: only our user may connect
    try:
        _add_port(server, f"{UNIX_PREFIX}{path}", credentials)
    except RuntimeError:
        if private_dir is not None:
            private_dir.rmdir()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return Listener(f"{UNIX_PREFIX}{path}", path, private_dir)


def _add_port(server: grpc.Server, addr: str, credentials: grpc.ServerCredentials | None) -> int:
    if credentials is None:
        return server.add_insecure_port(addr)
    return server.add_secure_port(addr, credentials)


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a daemon that was killed is removed; one that a live process answers is not."""
    if not path.is_socket():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink()
        return
    finally:
        probe.close()
    raise ListenError(f"another process is listening on {path}")
