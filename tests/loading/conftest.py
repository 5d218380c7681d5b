"""Model folders for loading tests, copied from the parity fixtures into tmp_path."""

from __future__ import annotations

import os

# On NVIDIA GPUs MLX runs float32 matmuls in TF32 unless told not to; parity tolerances assume true float32.
os.environ.setdefault("MLX_ENABLE_TF32", "0")

import shutil
from pathlib import Path

import mlx.core as mx
import pytest

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"


@pytest.fixture
def model_folder(tmp_path):
    """Factory (arch, layout="v5") -> a fresh copy of that fixture folder with config.json in that layout."""

    made = []

    def make(arch: str, layout: str = "v5") -> Path:
        dest = tmp_path / f"{arch}-{layout}-{len(made)}"
        made.append(dest)
        shutil.copytree(PARITY / arch, dest)
        if layout == "v4":
            shutil.copyfile(PARITY / arch / "config_v4.json", dest / "config.json")
        return dest

    return make


@pytest.fixture
def on_cpu():
    """Run the test with MLX's default device set to the CPU, so "auto" takes its CPU path on any machine."""
    previous = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(previous)
