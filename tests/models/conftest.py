"""Parity fixtures: tiny random models with logits computed by transformers in float32."""

from __future__ import annotations

import os

# On NVIDIA GPUs MLX runs float32 matmuls in TF32 unless told not to; parity tolerances assume true float32.
os.environ.setdefault("MLX_ENABLE_TF32", "0")

import shutil
from pathlib import Path

import mlx.core as mx
import pytest

from mlxd.loading.loader import LoadedModel, load_model
from mlxd.models import ops

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"


def copy_model_folder(arch: str, layout: str, dest: Path) -> Path:
    """A copy of the fixture folder whose config.json is in the requested transformers layout."""
    shutil.copytree(PARITY / arch, dest)
    if layout == "v4":
        shutil.copyfile(PARITY / arch / "config_v4.json", dest / "config.json")
    return dest


@pytest.fixture(autouse=True)
def float32_kernels():
    """Each test starts with the kernels a float32 load chooses here (NumPy's on the CPU, models/ops.py), so a
    model loaded once per session runs through them whatever an earlier test loaded since."""
    ops.use(ops.choose(mx.default_device(), "float32"))


@pytest.fixture(scope="session")
def parity_model(tmp_path_factory):
    """Factory (arch, layout) -> (LoadedModel in float32, expected arrays), loaded once per session."""
    loaded: dict[tuple[str, str], tuple[LoadedModel, dict[str, mx.array]]] = {}

    def get(arch: str, layout: str) -> tuple[LoadedModel, dict[str, mx.array]]:
        if (arch, layout) not in loaded:
            folder = copy_model_folder(arch, layout, tmp_path_factory.mktemp("parity") / arch)
            loaded[arch, layout] = (load_model(folder, dtype="float32"), mx.load(str(folder / "expected.safetensors")))
        return loaded[arch, layout]

    return get
