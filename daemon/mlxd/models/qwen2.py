"""Qwen2 / Qwen2.5: the Llama layout with biases on the q/k/v projections."""

from __future__ import annotations

from dataclasses import dataclass

from mlxd.models import llama


@dataclass
class ModelArgs(llama.ModelArgs):
    use_sliding_window: bool = False

    def __post_init__(self) -> None:
        # Published configs carry a sliding_window value that only applies when use_sliding_window is set.
        if not self.use_sliding_window:
            self.sliding_window = None
            self.layer_types = []
        super().__post_init__()

    @property
    def qkv_bias(self) -> bool:
        return True

    @property
    def o_bias(self) -> bool:
        return False


Model = llama.Model
