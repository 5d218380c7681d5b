"""The side channel between rank 0 and the other ranks: length-prefixed JSON frames over TCP (no pickle: a rank
never unpickles what the network sends).

Rank 0 (`Leader`) sends each runner call to every follower before running it; followers send only heartbeats.
A follower whose connection closes (it died) or that sends nothing for HEARTBEAT_TIMEOUT (it stalled, e.g.
stopped or swapped out) is reported once through `on_failure`. Rank 0 sends heartbeats too, from the moment a
follower connects, so that a follower tells a stalled rank 0 (stopped, or a host gone without closing the
connection) from an idle one and exits (parallel/follower.py).

Until both ends of a connection have loaded their share of the model, silence is allowed LOAD_TIMEOUT instead: a
follower says LOADED once its share is read, and rank 0's first runner call says the same of rank 0. Ranks reading
their weights can stall a whole host for seconds (three processes reading 6 GB each on a 24 GB host: both ranks'
heartbeat threads were silent for 3 s at once, and the group failed to start); a stall that long while serving still
ends the group. The silence allowed is re-read every HEARTBEAT_SECONDS while a reader waits (`next_frame`), so it
changes the moment both have loaded, not at the next frame: a follower stopped just after rank 0's warm-up (within
one heartbeat of its first runner call) was otherwise given the load timeout.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")
HEARTBEAT_SECONDS = 0.25
HEARTBEAT_TIMEOUT = 3.0  # a rank on a busy shared host may be slow to send, never this slow
LOAD_TIMEOUT = 60.0     # ... unless it is still loading (module docstring)
MAX_FRAME = 1 << 30     # rank 0's runner calls (a prompt's image pixels, base64)
FOLLOWER_FRAME = 1 << 10  # a follower's hello or heartbeat
ACCEPT_POLL = 0.5        # seconds between checks that the ranks still to connect are alive
HEARTBEAT = {"op": "alive"}
LOADED = {"op": "loaded"}  # a follower's, once: its share is loaded (FollowerEnd.say_loaded)

Message = dict[str, Any]


def frame(message: Message) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return _LENGTH.pack(len(body)) + body


def send_frame(sock: socket.socket, message: Message) -> None:
    sock.sendall(frame(message))


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class Silent(TimeoutError):
    """Nothing came from the other end for `seconds`."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"nothing for {seconds:.0f} s")
        self.seconds = seconds


def next_frame(sock: socket.socket, allowed: Callable[[], float | None], limit: int = MAX_FRAME) -> Message | None:
    """The next frame (recv_frame), waiting at most `allowed()` seconds for it to begin (None: for ever), re-read every
    HEARTBEAT_SECONDS so that a change applies at once; Silent when the wait runs out. A frame once begun is bounded
    by the socket's own timeout."""
    started = time.monotonic()
    readable = select.poll()  # not select.select: the daemon raises its open-file limit past select's 1,024
    readable.register(sock, select.POLLIN)
    while True:
        seconds = allowed()
        wait = HEARTBEAT_SECONDS if seconds is None else min(HEARTBEAT_SECONDS, started + seconds - time.monotonic())
        if wait <= 0:
            raise Silent(seconds or 0.0)
        if readable.poll(wait * 1000):  # data, or the connection closed (recv_frame tells which)
            return recv_frame(sock, limit)


def recv_frame(sock: socket.socket, limit: int = MAX_FRAME) -> Message | None:
    """The next message, or None when the peer closed the connection; a ValueError for a frame over `limit`
    bytes."""
    header = _read_exactly(sock, _LENGTH.size)
    if header is None:
        return None
    (length,) = _LENGTH.unpack(header)
    if length > limit:
        raise ValueError(f"a side-channel frame of {length} bytes")
    body = _read_exactly(sock, length)
    if body is None:
        return None
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError("a side-channel frame that is not a JSON object")
    return message


class Leader:
    """Rank 0's end: listens on `addr`, accepts one connection per follower (each says its rank first)."""

    def __init__(self, host: str, port: int, followers: int) -> None:
        self._server = socket.create_server((host, port))
        self.addr = f"{host}:{self._server.getsockname()[1]}"
        self.followers = followers
        self._socks: dict[int, socket.socket] = {}
        self._lock = threading.Lock()
        self.failure: str | None = None
        self._on_failure: Callable[[str], None] = lambda reason: None
        self._closing = False
        self._loaded = False  # this rank has loaded its share (its first runner call went out)
        threading.Thread(target=self._beat, name="rank-0-heartbeat", daemon=True).start()
        # Why a rank that has not connected never will (one this host started has exited), or None: checked while
        # accept waits, so a rank that dies at start fails the group at once, not after the whole timeout.
        self.lost: Callable[[], str | None] = lambda: None

    def accept(self, timeout: float, on_failure: Callable[[str], None]) -> None:
        """Wait for every follower to connect (within `timeout` seconds), then watch each one's heartbeats; a
        ConnectionError as soon as `lost` names a rank that cannot connect any more."""
        self._on_failure = on_failure
        deadline = time.monotonic() + timeout
        while len(self._socks) < self.followers:
            self._server.settimeout(max(0.01, min(ACCEPT_POLL, deadline - time.monotonic())))
            try:
                sock, _ = self._server.accept()
            except TimeoutError as e:
                reason = self.lost()
                if reason is not None:
                    raise ConnectionError(reason) from e
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{self.followers - len(self._socks)} rank(s) did not connect within "
                                       f"{timeout:.0f} s") from e
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(HEARTBEAT_TIMEOUT)  # a follower says hello as it connects, then beats
            try:
                hello = recv_frame(sock, FOLLOWER_FRAME)
            except (OSError, ValueError):
                hello = None
            rank = hello.get("rank") if hello is not None and hello.get("op") == "hello" else None
            if not isinstance(rank, int) or not 0 < rank <= self.followers or rank in self._socks:
                sock.close()  # not a follower of this group, or a rank already connected
                continue
            with self._lock:  # heartbeats go to it from now on
                self._socks[rank] = sock
        self._server.close()
        for rank, sock in self._socks.items():
            threading.Thread(target=self._watch, args=(rank, sock), name=f"rank-{rank}-watch", daemon=True).start()

    def send(self, message: Message) -> None:
        """Send `message` to every follower; a follower that cannot take it is reported as failed."""
        if self.failure is not None:
            raise ConnectionError(self.failure)
        self._loaded = True
        data = frame(message)  # encoded once for every follower
        with self._lock:
            for rank, sock in self._socks.items():
                try:
                    sock.sendall(data)
                except OSError as e:
                    self._fail(f"rank {rank} is gone ({e})")
                    raise ConnectionError(self.failure) from e

    def close(self) -> None:
        """Tell every follower to exit (after a drain) and close the connections."""
        self._closing = True
        try:
            data = frame({"op": "exit"})
            with self._lock:
                for sock in self._socks.values():
                    try:
                        sock.sendall(data)
                    except OSError:
                        pass
        finally:
            for sock in self._socks.values():
                sock.close()
            self._server.close()

    def _beat(self) -> None:
        """A heartbeat to every connected follower each HEARTBEAT_SECONDS (between runner calls, under the lock)."""
        data = frame(HEARTBEAT)
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            with self._lock:
                if self._closing or self.failure is not None:
                    return
                for rank, sock in self._socks.items():
                    try:
                        sock.sendall(data)
                    except OSError as e:
                        self._fail(f"rank {rank} is gone ({e})")
                        return

    def _watch(self, rank: int, sock: socket.socket) -> None:
        """Read `rank`'s heartbeats until it fails (closing the connections ends this too, as no failure)."""
        loaded = False  # it has said LOADED

        def allowed() -> float:
            return HEARTBEAT_TIMEOUT if loaded and self._loaded else LOAD_TIMEOUT

        while True:
            try:
                message = next_frame(sock, allowed, FOLLOWER_FRAME)
            except TimeoutError as e:  # Silent, or a frame begun and cut short
                seconds = e.seconds if isinstance(e, Silent) else HEARTBEAT_TIMEOUT
                loading = "" if seconds == HEARTBEAT_TIMEOUT else " while loading"
                self._fail(f"rank {rank} stalled: no heartbeat for {seconds:.0f} s{loading}")
                return
            except (OSError, ValueError) as e:
                self._fail(f"rank {rank} is gone ({e})")
                return
            if message is None:
                self._fail(f"rank {rank} exited")
                return
            loaded = loaded or message == LOADED

    def _fail(self, reason: str) -> None:
        if self.failure is None and not self._closing:
            self.failure = reason
            log.critical("tensor parallelism: %s", reason)
            self._on_failure(reason)


class FollowerEnd:
    """A follower's end of the side channel: heartbeats sent from a thread, LOADED said once from the main thread
    (one lock: frames from two threads could interleave)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loaded = threading.Event()  # this rank has loaded its share
        self._lock = threading.Lock()

    def send(self, message: Message) -> None:
        with self._lock:
            send_frame(self.sock, message)

    def say_loaded(self) -> None:
        """Tell rank 0 this rank has loaded, before it joins any collective: rank 0's warm-up cannot finish before
        LOADED is on its way, so a follower stopped the moment the group serves is held to HEARTBEAT_TIMEOUT
        (sent from the heartbeat thread, a quarter of a second later, it could miss that moment)."""
        self.send(LOADED)
        self.loaded.set()


def connect(addr: str, rank: int, timeout: float = 60.0) -> FollowerEnd:
    """A follower's connection to rank 0's side channel (retried while rank 0 is starting), announced with its rank;
    a thread sends heartbeats on it from then on."""
    host, port = addr.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((host, int(port)), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    sock.settimeout(None)  # until rank 0 accepts this rank (it may still be starting): see follower._read
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    send_frame(sock, {"op": "hello", "rank": rank})
    end = FollowerEnd(sock)

    def beat() -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            try:
                end.send(HEARTBEAT)
            except OSError:
                return

    threading.Thread(target=beat, name="heartbeat", daemon=True).start()
    return end
