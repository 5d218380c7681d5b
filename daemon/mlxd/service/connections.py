"""How many connections and streams the daemon takes, and when it lets go of them.

An idle connection costs a file descriptor, and at the default soft limit (1,024) about a thousand of them, made
by anyone who can reach the address, locked every new client out. So the soft limit is raised to the hard one at
start; connections are capped below it, leaving a reserve of descriptors for the daemon's own files and its
parent's pipes; a connection that never finishes its handshake, or carries no call for a while, is closed; and
keepalive pings find peers that vanished while their streams were open.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

log = logging.getLogger(__name__)

FD_RESERVE = 128   # descriptors kept out of the connection cap


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 0               # 0: the file-descriptor limit less FD_RESERVE
    max_streams_per_connection: int = 1024
    idle_seconds: float = 60.0             # a connection without calls this long is closed (clients reconnect)
    handshake_seconds: float = 10.0
    keepalive_seconds: float = 60.0        # the server pings a connection with calls this often...
    keepalive_timeout_seconds: float = 20.0   # ...and closes it when no answer comes this soon
    min_client_ping_seconds: float = 10.0  # clients pinging more often are told to stop (GOAWAY)


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit; the soft limit now in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, error)
    return soft


def max_connections(limits: ConnectionLimits, fd_limit: int) -> int:
    if limits.max_connections:
        return limits.max_connections
    return max(16, fd_limit - FD_RESERVE)


def channel_options(limits: ConnectionLimits, fd_limit: int) -> list[tuple[str, int]]:
    ms = lambda seconds: int(seconds * 1000)  # noqa: E731
    return [
        ("grpc.max_allowed_incoming_connections", max_connections(limits, fd_limit)),
        ("grpc.max_concurrent_streams", limits.max_streams_per_connection),
        ("grpc.max_connection_idle_ms", ms(limits.idle_seconds)),
        ("grpc.server_handshake_timeout_ms", ms(limits.handshake_seconds)),
        ("grpc.keepalive_time_ms", ms(limits.keepalive_seconds)),
        ("grpc.keepalive_timeout_ms", ms(limits.keepalive_timeout_seconds)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(limits.min_client_ping_seconds)),
        ("grpc.http2.max_ping_strikes", 2),
    ]
