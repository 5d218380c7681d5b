"""Model architectures, one module per Hugging Face `model_type`."""

from __future__ import annotations

import importlib
from types import ModuleType

from mlxd.errors import ModelLoadError

# HF model_type -> module under mlxd.models. Aliases map checkpoints that reuse an architecture.
MODEL_TYPES: dict[str, str] = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma3_text": "gemma3_text",
    "gemma3": "gemma3",
}


def get_model_module(model_type: str) -> ModuleType:
    """The module (with ModelArgs and Model) implementing `model_type`; ModelLoadError if there is none."""
    name = MODEL_TYPES.get(model_type)
    if name is None:
        raise ModelLoadError(f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(MODEL_TYPES))}")
    return importlib.import_module(f"mlxd.models.{name}")
