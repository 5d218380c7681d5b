"""Bearer-token authentication: every RPC needs `authorization: Bearer <token>` metadata, except health checks
when they are exempted for probes that cannot send headers (grpc_health_probe, Kubernetes gRPC probes).

The check runs on the call's headers, before its request message is read: a caller without the token is answered
at once, and a stream that sends headers and never its message costs nothing (issue 15).
"""

from __future__ import annotations

import hmac
import logging
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

HEALTH_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


class TokenFileError(Exception):
    """The token file is missing, unreadable or holds no usable token; the message is the one-line reason."""


def read_token(path: Path) -> bytes:
    """The token is the file's content without surrounding whitespace: printable ASCII, at least 16 characters."""
    try:
        token = path.read_bytes().strip()
        mode = path.stat().st_mode
    except OSError as error:
        raise TokenFileError(f"--auth-token-file {path}: {error.strerror or error}") from error
    if len(token) < 16 or not all(0x21 <= b <= 0x7E for b in token):
        raise TokenFileError(f"--auth-token-file {path}: the token must be at least 16 printable ASCII characters "
                             "without spaces")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("--auth-token-file %s can be read by other users (mode %o)", path, stat.S_IMODE(mode))
    return token


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: bytes, exempt_health: bool) -> None:
        self._token = token
        self._exempt = HEALTH_METHODS if exempt_health else frozenset()

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                             Awaitable[grpc.RpcMethodHandler]],
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        if handler_call_details.method in self._exempt or self._authorized(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        return _DENY

    def _authorized(self, metadata: tuple | None) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                scheme, _, credential = value.partition(" ")
                # compare_digest takes time independent of where the tokens differ.
                return scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), self._token)
        return False


async def _deny(requests: object, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (authorization metadata)")


# A request-streaming handler: gRPC reads no message before calling it (a unary one would wait for the request
# first). Unknown methods are denied too, so that a caller without the token cannot learn which methods exist.
_DENY = grpc.stream_stream_rpc_method_handler(_deny)
