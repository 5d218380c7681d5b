"""Model architectures, one module per Hugging Face `model_type`, imported by that name (as mlx-lm does)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from mlxd.errors import ModelLoadError

# Every model_type mlxd implements, each in the module mlxd.models.<model_type> (ModelArgs and Model): the
# allowlist, one line per architecture. Vision-language models (protocol.VisionLanguageModel) take images.
TEXT_MODELS = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "qwen3_moe", "mixtral", "gpt_oss",
               "glm4_moe_lite", "gemma4", "gemma4_text", "qwen3_5", "qwen3_5_text", "qwen3_5_moe",
               "qwen3_5_moe_text", "qwen3_next", "nemotron_h")
VISION_LANGUAGE_MODELS = ("gemma3",)


@dataclass(frozen=True)
class Architecture:
    model_type: str
    module: ModuleType  # with ModelArgs and Model
    takes_images: bool


def architecture(model_type: str) -> Architecture:
    """The architecture implementing `model_type`; ModelLoadError naming the supported ones if there is none."""
    takes_images = model_type in VISION_LANGUAGE_MODELS
    if model_type not in TEXT_MODELS and not takes_images:
        supported = ", ".join(sorted(TEXT_MODELS + VISION_LANGUAGE_MODELS))
        raise ModelLoadError(f"unsupported model_type {model_type!r}; supported: {supported}")
    return Architecture(model_type, importlib.import_module(f"mlxd.models.{model_type}"), takes_images)
