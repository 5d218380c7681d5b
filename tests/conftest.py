"""What every test folder shares: true float32 on GPUs, the kernels a float32 load chooses, fixture folders."""

from __future__ import annotations

import os

# On NVIDIA GPUs MLX runs float32 matmuls in TF32 unless told not to; parity tolerances assume true float32.
os.environ.setdefault("MLX_ENABLE_TF32", "0")

from pathlib import Path  # noqa: E402

import mlx.core as mx  # noqa: E402
import pytest  # noqa: E402

from mlxd.models import ops  # noqa: E402
from tests.helpers.parity import copy_model_folder  # noqa: E402


@pytest.fixture(autouse=True)
def float32_kernels():
    """Each test starts with the kernels a float32 load chooses here (NumPy's on the CPU, models/ops.py), so a
    model loaded once per session runs through them whatever an earlier test loaded since."""
    ops.use(ops.choose(mx.default_device(), "float32"))


@pytest.fixture
def model_folder(tmp_path):
    """Factory (arch, layout="v5") -> a fresh copy of that parity fixture folder with config.json in that layout."""
    made: list[Path] = []

    def make(arch: str, layout: str = "v5") -> Path:
        made.append(copy_model_folder(arch, layout, tmp_path / f"{arch}-{layout}-{len(made)}"))
        return made[-1]

    return make
