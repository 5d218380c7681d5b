"""Gemma3Config: the top-level keys verbatim, with the text and vision configs as nested ModelArgs.

Published configs omit every key equal to transformers' default, so those defaults are spelled out here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlxd.models import gemma3_text
from mlxd.models.base import BaseModelArgs

# Gemma3TextConfig's defaults for the keys gemma3_text.ModelArgs requires.
_TEXT_DEFAULTS: dict[str, Any] = {
    "model_type": "gemma3_text",
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 131_072,
}


@dataclass
class VisionArgs(BaseModelArgs):
    """SiglipVisionConfig, with its defaults."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"

    def __post_init__(self) -> None:
        if self.hidden_act not in ("gelu_pytorch_tanh", "gelu"):
            raise ValueError(f"unsupported vision hidden_act {self.hidden_act!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    text_config: dict[str, Any] = field(default_factory=dict)
    vision_config: dict[str, Any] = field(default_factory=dict)
    mm_tokens_per_image: int = 256
    boi_token_index: int = 255_999
    eoi_token_index: int = 256_000
    image_token_index: int = 262_144

    def __post_init__(self) -> None:
        self.text = gemma3_text.ModelArgs.from_dict({**_TEXT_DEFAULTS, **self.text_config})
        self.vision = VisionArgs.from_dict(self.vision_config)
        side = self.vision.image_size // self.vision.patch_size
        per_side = round(self.mm_tokens_per_image**0.5)
        if per_side * per_side != self.mm_tokens_per_image or side % per_side:
            raise ValueError(f"mm_tokens_per_image {self.mm_tokens_per_image} does not pool a {side}x{side} "
                             "patch grid evenly")

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    @property
    def max_position_embeddings(self) -> int | None:
        return self.text.max_position_embeddings
