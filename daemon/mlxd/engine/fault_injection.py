"""Test hook: make the model's forward pass raise when it sees one token id, so tests can prove that a failure
inside one request ends only that request (issue 7, crash isolation). Installed only when the variable is set.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)

ENV = "MLXD_TEST_FAIL_ON_TOKEN"


class FailOnToken:
    """The model, except that a forward pass whose input holds `token_id` raises RuntimeError."""

    def __init__(self, model: Any, token_id: int) -> None:
        self._model = model
        self._token_id = token_id

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if (inputs == self._token_id).any().item():
            # The thread id lets a test check that the same worker thread serves the next request.
            raise RuntimeError(f"injected fault: token {self._token_id} on thread {threading.get_native_id()}")
        return self._model(inputs, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def inject_from_env(runtime: Any) -> None:
    """Wrap runtime.model when MLXD_TEST_FAIL_ON_TOKEN is set (after warm-up, which must not trip it)."""
    value = os.environ.get(ENV)
    if value is None:
        return
    log.warning("test hook %s=%s: the model raises on that token", ENV, value)
    runtime.model = FailOnToken(runtime.model, int(value))
