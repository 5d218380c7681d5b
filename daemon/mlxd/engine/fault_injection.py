"""Test hooks: make the model's forward pass misbehave when it sees one token id, so tests can prove that a
failure inside one request ends only that request, and that health notices a stalled worker (issue 7).
Installed only when one of the variables is set:

- MLXD_TEST_FAIL_ON_TOKEN=<id>: the forward pass raises RuntimeError.
- MLXD_TEST_STALL_ON_TOKEN=<id>:<seconds>: the forward pass sleeps first, as a hung device call would.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

FAIL_ENV = "MLXD_TEST_FAIL_ON_TOKEN"
STALL_ENV = "MLXD_TEST_STALL_ON_TOKEN"


class FaultOnToken:
    """The model, except that a forward pass whose input holds `token_id` first runs `fault`."""

    def __init__(self, model: Any, token_id: int, fault: Callable[[], None]) -> None:
        self._model = model
        self._token_id = token_id
        self._fault = fault

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if (inputs == self._token_id).any().item():
            self._fault()
        return self._model(inputs, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def inject_from_env(runtime: Any) -> None:
    """Wrap runtime.model for each hook variable that is set (after warm-up, which must not trip them)."""
    if FAIL_ENV in os.environ:
        token = int(os.environ[FAIL_ENV])

        def fail() -> None:
            # The thread id lets a test check that the same worker thread serves the next request.
            raise RuntimeError(f"injected fault: token {token} on thread {threading.get_native_id()}")
        _install(runtime, FAIL_ENV, token, fail)
    if STALL_ENV in os.environ:
        token_text, seconds_text = os.environ[STALL_ENV].split(":")
        seconds = float(seconds_text)
        _install(runtime, STALL_ENV, int(token_text), lambda: time.sleep(seconds))


def _install(runtime: Any, env: str, token: int, fault: Callable[[], None]) -> None:
    log.warning("test hook %s=%s is active", env, os.environ[env])
    runtime.model = FaultOnToken(runtime.model, token, fault)
