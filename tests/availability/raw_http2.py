"""A hand-driven HTTP/2 client (the h2 package) for what grpcio cannot be made to do: send a call's headers and
never its message, hold its receive window at zero so replies cannot be delivered (and open it later), never read
at all."""

from __future__ import annotations

import socket
import struct
import time

import h2.config
import h2.connection
import h2.events
import h2.settings


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return struct.pack(">BI", 0, len(message)) + message


def connect(addr: str, timeout: float = 10.0) -> socket.socket:
    if addr.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = addr[len("unix:"):]
    else:
        host, port = addr.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = (host.replace("0.0.0.0", "127.0.0.1"), int(port))
    sock.settimeout(timeout)
    sock.connect(target)
    return sock


class RawConnection:
    """One HTTP/2 connection. window: the initial receive window of its streams; 0 means the server can send
    headers but no message on them until open_window."""

    def __init__(self, addr: str, window: int | None = None) -> None:
        self.sock = connect(addr)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        if window is not None:
            self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.events: list[h2.events.Event] = []
        self._flush()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def open_stream(self, method: str, message: bytes | None = None, metadata: tuple = ()) -> int:
        """Start a call; with message None only its headers go out (no body, the stream stays open)."""
        stream_id = self.h2.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", "http"), (":path", method), (":authority", "localhost"),
                   ("content-type", "application/grpc"), ("te", "trailers"), *metadata]
        self.h2.send_headers(stream_id, headers, end_stream=False)
        if message is not None:
            self.h2.send_data(stream_id, grpc_frame(message), end_stream=True)
        self._flush()
        return stream_id

    def read(self, seconds: float) -> list[h2.events.Event]:
        """Read what arrives for `seconds` (settings and pings are answered; no window is opened)."""
        deadline = time.monotonic() + seconds
        new: list[h2.events.Event] = []
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            new += self.h2.receive_data(data)
            self._flush()
        self.events += new
        return new

    def open_window(self, stream_id: int, size: int = 1 << 24) -> None:
        """Let the server send `size` more bytes on the stream and on the connection: a client that reads again."""
        self.h2.increment_flow_control_window(size, stream_id=stream_id)
        self.h2.increment_flow_control_window(size)
        self._flush()

    def messages(self, stream_id: int) -> bytes:
        """The bytes of the stream's messages received so far (gRPC's length-prefixed frames, joined)."""
        return b"".join(event.data for event in self.events
                        if isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id)

    def status(self, stream_id: int) -> str | None:
        """The grpc-status in the trailers (or trailers-only headers) received for a stream, if any."""
        for event in self.events:
            if isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived)) and \
                    event.stream_id == stream_id:
                status = dict(event.headers).get("grpc-status")
                if status is not None:
                    return status
        return None

    def close(self) -> None:
        self.sock.close()
