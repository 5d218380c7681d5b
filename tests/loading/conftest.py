"""Loading tests: a switch to the CPU device (model folders come from the root conftest's model_folder)."""

from __future__ import annotations

import mlx.core as mx
import pytest


@pytest.fixture
def on_cpu():
    """Run the test with MLX's default device set to the CPU, so "auto" takes its CPU path on any machine."""
    previous = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(previous)
