"""Open a channel to the daemon: plain, TLS or mutual TLS, optionally sending a bearer token with every call."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class TlsOptions:
    """PEM bytes. ca=None trusts the system's roots; cert and key are the client's pair for mutual TLS."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None   # the name to verify when it differs from the address's host

    @classmethod
    def from_files(cls, ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None,
                   server_name: str | None = None) -> TlsOptions:
        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None
        return cls(read(ca), read(cert), read(key), server_name)


def open_channel(addr: str, *, token: str | None = None, tls: TlsOptions | None = None,
                 options: list[tuple[str, object]] | None = None) -> grpc.Channel:
    options = list(options or [])
    if tls is None:
        channel = grpc.insecure_channel(addr, options=options)
    else:
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key,
                                                   certificate_chain=tls.cert)
        channel = grpc.secure_channel(addr, credentials, options=options)
    # Metadata rather than call credentials: gRPC sends call credentials only over TLS, and a token over a
    # local unix socket is a valid setup.
    return grpc.intercept_channel(channel, _BearerToken(token)) if token is not None else channel


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                           "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials, details.wait_for_ready,
                            details.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)
