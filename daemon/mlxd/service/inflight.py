"""Generations the service holds, by request id, from the moment they arrive: a Cancel RPC finds a request while it
is still being prepared (before the worker knows it), and a duplicate id is refused before any work is done.

Used from the event loop only, so it needs no lock.
"""

from __future__ import annotations

from mlxd.engine.request import CancelToken
from mlxd.errors import InvalidRequest
from mlxd.service.request_log import quoted

ID_QUOTE_CHARS = 64   # of a request id quoted in an error


class InFlight:
    def __init__(self) -> None:
        self._tokens: dict[str, CancelToken] = {}

    def add(self, request_id: str, cancel: CancelToken) -> None:
        if request_id in self._tokens:
            raise InvalidRequest(f"request_id {quoted(request_id, ID_QUOTE_CHARS)} is already in use by a live "
                                 "request")
        self._tokens[request_id] = cancel

    def remove(self, request_id: str, cancel: CancelToken) -> None:
        if self._tokens.get(request_id) is cancel:
            del self._tokens[request_id]

    def cancel(self, request_id: str, reason: str) -> bool:
        token = self._tokens.get(request_id)
        if token is None:
            return False
        token.cancel(reason)
        return True

    def cancel_all(self, reason: str) -> None:
        for token in self._tokens.values():
            token.cancel(reason)

    def __len__(self) -> int:
        return len(self._tokens)
