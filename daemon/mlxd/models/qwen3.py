"""Qwen3 (dense): the Llama layout with RMSNorm on each query and key head before rotary embedding."""

from __future__ import annotations

from dataclasses import dataclass

from mlxd.models import llama


@dataclass
class ModelArgs(llama.ModelArgs):
    head_dim: int = 128  # transformers' Qwen3Config default, not hidden_size // heads
    use_sliding_window: bool = False

    def __post_init__(self) -> None:
        if not self.use_sliding_window:
            self.sliding_window = None
            self.layer_types = []
        super().__post_init__()

    @property
    def qk_norm(self) -> bool:
        return True


Model = llama.Model
