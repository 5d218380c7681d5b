"""The tiny random Gemma 3 VLM of tests/fixtures/parity/gemma3, with transformers' float32 results."""

from __future__ import annotations

import os

# On NVIDIA GPUs MLX runs float32 matmuls in TF32 unless told not to; parity tolerances assume true float32.
os.environ.setdefault("MLX_ENABLE_TF32", "0")

import shutil
from pathlib import Path

import mlx.core as mx
import pytest

from mlxd.loading.loader import LoadedModel, load_model

GEMMA3 = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "gemma3"
IMAGE_PNG = GEMMA3 / "image.png"
BOI, IMAGE, EOI = 317, 319, 318


def model_folder(layout: str, dest: Path) -> Path:
    """A copy of the fixture whose config.json is in the transformers 5 ("v5") or 4 ("v4") layout."""
    shutil.copytree(GEMMA3, dest)
    if layout == "v4":
        shutil.copyfile(GEMMA3 / "config_v4.json", dest / "config.json")
    return dest


@pytest.fixture(scope="session")
def expected() -> dict[str, mx.array]:
    return mx.load(str(GEMMA3 / "expected.safetensors"))


@pytest.fixture(scope="session")
def vlm(tmp_path_factory):
    """Factory layout -> LoadedModel in float32, loaded once per session."""
    loaded: dict[str, LoadedModel] = {}

    def get(layout: str = "v5") -> LoadedModel:
        if layout not in loaded:
            loaded[layout] = load_model(model_folder(layout, tmp_path_factory.mktemp("vlm") / "gemma3"),
                                        dtype="float32")
        return loaded[layout]

    return get
