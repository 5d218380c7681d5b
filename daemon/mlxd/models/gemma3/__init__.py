"""Gemma 3 vision-language model (`model_type: gemma3`): SigLIP vision tower, projector, gemma3 text decoder."""

from mlxd.models.gemma3.config import ModelArgs
from mlxd.models.gemma3.model import Model

__all__ = ["ModelArgs", "Model"]
