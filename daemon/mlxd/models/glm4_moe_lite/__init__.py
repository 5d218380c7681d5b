"""GLM-4.7-Flash (`model_type: glm4_moe_lite`): multi-head latent attention whose cache holds the compressed
latent, and sigmoid-routed experts with shared ones (HYBRID_NOTES.md §5 has the math and the quirks)."""

from mlxd.models.glm4_moe_lite.args import ModelArgs
from mlxd.models.glm4_moe_lite.model import Model

__all__ = ["ModelArgs", "Model"]
