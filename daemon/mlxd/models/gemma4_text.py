"""A text-only Gemma 4 save (`model_type: gemma4_text`, a flat config): the same decoder as models/gemma4."""

from mlxd.models.gemma4 import Model, ModelArgs

__all__ = ["ModelArgs", "Model"]
