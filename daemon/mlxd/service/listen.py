"""Where the daemon listens, and who may reach it there.

A loopback address or a unix socket reaches only this host (and a unix socket only our user: it is created
0600). Any other address reaches the network, so serving it needs TLS or a bearer token. A unix socket in a
directory that other users may write, without the sticky bit, could be swapped for theirs: refused.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

UNIX_PREFIX = "unix:"


class ListenError(Exception):
    """The address cannot or may not be served; the message is the one-line reason."""


@dataclass
class Listener:
    """What was bound, and what to clean up at exit."""

    addr: str                         # the address clients use ("host:port" with the real port, or "unix:/path")
    socket_path: Path | None = None
    private_dir: Path | None = None   # a directory we created for the socket; removed at exit
    socket_id: tuple[int, int] = (0, 0)   # (device, inode) of the socket file we created

    def set_aside_replacement(self) -> Path | None:
        """Before the server stops, since gRPC then unlinks whatever socket is at the path: a socket that replaced
        ours (someone else's) is moved aside, to be put back by `restore`; where it went, or None."""
        if self.socket_path is None or self._ours() is not False:
            return None
        log.warning("%s is no longer the socket this daemon created; left in place", self.socket_path)
        aside = self.socket_path.with_name(f".{self.socket_path.name}.mlxd-{os.getpid()}")
        os.rename(self.socket_path, aside)
        return aside

    def restore(self, aside: Path | None) -> None:
        if aside is not None and self.socket_path is not None:
            os.rename(aside, self.socket_path)

    def remove(self) -> None:
        """Remove our socket file (a file that replaced it at that path is someone else's and stays), and the
        directory we made for it."""
        if self.socket_path is not None and self._ours():
            self.socket_path.unlink(missing_ok=True)
        if self.private_dir is not None:
            self.private_dir.rmdir()

    def _ours(self) -> bool | None:
        """Whether the file at socket_path is the socket we created; None when there is none."""
        try:
            info = os.lstat(self.socket_path)   # type: ignore[arg-type]
        except FileNotFoundError:
            return None
        return (info.st_dev, info.st_ino) == self.socket_id


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


def bind(server: grpc.aio.Server, addr: str, credentials: grpc.ServerCredentials | None) -> Listener:
    if addr.startswith(UNIX_PREFIX):
        return _bind_unix(server, addr[len(UNIX_PREFIX):], credentials)
    port = _add_port(server, addr, credentials)
    host = addr.rsplit(":", 1)[0]
    return Listener(f"{host}:{port}")


def bind_private(server: grpc.aio.Server) -> Listener:
    """A unix socket in a new 0700 directory: only our user can reach it, and only who reads its path."""
    return _bind_unix(server, "", None)


def _bind_unix(server: grpc.aio.Server, path_text: str, credentials: grpc.ServerCredentials | None) -> Listener:
    private_dir = None
    if path_text:
        path = Path(path_text)
        _check_directory(path.parent)
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
    info = os.lstat(path)
    return Listener(f"{UNIX_PREFIX}{path}", path, private_dir, (info.st_dev, info.st_ino))


def _check_directory(folder: Path) -> None:
    """Others who may write the socket's directory may rename our socket away and put theirs in its place (and
    we would remove theirs at exit), unless the directory is sticky (as /tmp is)."""
    info = folder.stat()
    if info.st_mode & stat.S_ISVTX:
        return
    if info.st_mode & stat.S_IWOTH:
        raise ListenError(f"{folder} can be written by every user and has no sticky bit: another user could "
                          "replace the socket; use a private directory (or unix: alone for a new one)")
    if info.st_mode & stat.S_IWGRP:
        log.warning("%s can be written by its group (gid %d): a member could replace the socket", folder,
                    info.st_gid)
    if info.st_uid not in (os.getuid(), 0):
        log.warning("%s belongs to uid %d, who could replace the socket", folder, info.st_uid)


def _add_port(server: grpc.aio.Server, addr: str, credentials: grpc.ServerCredentials | None) -> int:
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
