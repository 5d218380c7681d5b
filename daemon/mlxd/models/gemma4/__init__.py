"""Gemma 4 (`model_type: gemma4`, the published vision-language checkpoints, served as text models): the E2B/E4B
decoders (per-layer embeddings, KV sharing) and the 26B-A4B one (an MoE block beside each MLP, K=V layers)."""

from mlxd.models.gemma4.config import ModelArgs
from mlxd.models.gemma4.model import Model

__all__ = ["ModelArgs", "Model"]
