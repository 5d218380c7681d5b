"""Parity fixtures: tiny random models with logits computed by transformers in float32."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxd.loading.loader import LoadedModel, load_model
from tests.helpers.parity import copy_model_folder


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
