"""Fixtures for the tiny random Gemma 3 VLM: transformers' float32 results and loaded models."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxd.loading.loader import LoadedModel, load_model
from tests.vlm.gemma3_fixture import GEMMA3, model_folder


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
