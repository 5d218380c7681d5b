"""TLS for the daemon: a server certificate and key, and optionally a client CA that makes TLS mutual."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsConfigError(Exception):
    """A TLS file is missing, unreadable or not PEM; the message is the one-line reason."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None   # when set, clients must present a certificate this CA signed


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials for add_secure_port. The files are read once, here: a bad file stops the daemon at start
    rather than failing every handshake later."""
    cert, key = _read_pem(files.cert, "--tls-cert"), _read_pem(files.key, "--tls-key")
    client_ca = _read_pem(files.client_ca, "--tls-client-ca") if files.client_ca is not None else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def _read_pem(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TlsConfigError(f"{flag} {path}: {error.strerror or error}") from error
    if b"-----BEGIN " not in data:
        raise TlsConfigError(f"{flag} {path}: not a PEM file")
    return data
