"""Qwen3.5 MoE's text model under the model_type transformers 5 writes for it (a flat `qwen3_5_moe_text` config)."""

from mlxd.models.qwen3_5_moe import Model, ModelArgs

__all__ = ["Model", "ModelArgs"]
