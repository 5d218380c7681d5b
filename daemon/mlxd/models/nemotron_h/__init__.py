"""Nemotron-H and Nemotron 3 Nano (`model_type: nemotron_h`): a hybrid of Mamba-2 layers, attention layers without
positional encoding, relu² MLPs and (Nano) sigmoid-routed relu² experts, one mixer per layer as
`hybrid_override_pattern` says (HYBRID_NOTES.md §6 has the math and the quirks)."""

from mlxd.models.nemotron_h.args import ModelArgs
from mlxd.models.nemotron_h.model import Model

__all__ = ["ModelArgs", "Model"]
