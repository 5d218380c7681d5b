"""Gemma 4's configuration: the decoder's keys verbatim (Gemma4TextConfig's defaults), and the per-layer facts the
model is built from (head size, kv heads, window, which layer's keys a KV-shared layer reads, MLP width).

Published checkpoints are the vision-language `Gemma4ForConditionalGeneration` (`model_type: gemma4`) with the
decoder under `text_config`; a text-only save (`gemma4_text`) is flat. The full-attention layers' head size and kv
heads come as `global_head_dim` / `num_global_key_value_heads` in published configs, and as `per_layer_config`
({layer index: overrides}) in what transformers 5 writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlxd.models.base import BaseModelArgs

SLIDING, FULL = "sliding_attention", "full_attention"


@dataclass
class TextArgs(BaseModelArgs):
    model_type: str = "gemma4_text"
    vocab_size: int = 262_144
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 30
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    global_head_dim: int = 512  # transformers' default when a config names neither this nor per_layer_config
    num_global_key_value_heads: int | None = None  # used only with attention_k_eq_v
    per_layer_config: dict[str, dict[str, Any]] | None = None
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 131_072
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    rope_parameters: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
        FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
    })
    attention_bias: bool = False
    sliding_window: int = 512
    layer_types: list[str] = field(default_factory=list)
    final_logit_softcapping: float | None = None
    use_bidirectional_attention: str | None = None
    vocab_size_per_layer_input: int = 262_144
    hidden_size_per_layer_input: int = 256
    attention_k_eq_v: bool = False
    num_kv_shared_layers: int = 0
    enable_moe_block: bool = False
    use_double_wide_mlp: bool = False
    num_experts: int | None = None
    top_k_experts: int | None = None
    moe_intermediate_size: int | None = None

    def __post_init__(self) -> None:
        if self.hidden_activation != "gelu_pytorch_tanh":
            raise ValueError(f"unsupported hidden_activation {self.hidden_activation!r}")
        if self.use_bidirectional_attention == "all":
            raise ValueError("use_bidirectional_attention 'all' (an encoder) is not a decoder mlxd serves")
        n = self.num_hidden_layers
        if not self.layer_types:  # Gemma4TextConfig's default: five sliding layers, then one full
            self.layer_types = [FULL if (i + 1) % 6 == 0 else SLIDING for i in range(n)]
        self.layer_types = list(self.layer_types)
        # transformers forces the last layer to full attention (with a warning); so do we, to give its logits.
        self.layer_types[-1] = FULL
        if self.enable_moe_block and not (self.num_experts and self.top_k_experts and self.moe_intermediate_size):
            raise ValueError("enable_moe_block needs num_experts, top_k_experts and moe_intermediate_size")
        if not 0 <= self.num_kv_shared_layers < n:
            raise ValueError(f"num_kv_shared_layers {self.num_kv_shared_layers} must be below {n} layers")
        self._overrides = self._layer_overrides()
        self._sources = [self._kv_source(i) for i in range(n)]

    def _layer_overrides(self) -> dict[int, dict[str, Any]]:
        """{layer: {"head_dim", "num_key_value_heads"}} for the layers that differ from head_dim /
        num_key_value_heads, read as transformers' Gemma4TextConfig does."""
        if self.per_layer_config is not None:
            return {int(i): dict(v) for i, v in self.per_layer_config.items()}
        override: dict[str, Any] = {"head_dim": self.global_head_dim}
        if self.attention_k_eq_v and self.num_global_key_value_heads is not None:
            override["num_key_value_heads"] = self.num_global_key_value_heads
        return {i: override for i, kind in enumerate(self.layer_types) if kind == FULL}

    def _kv_source(self, layer: int) -> int:
        """The layer whose keys and values `layer` attends to: itself, or for a KV-shared layer the last layer
        before the shared ones that has its attention type (transformers' store_full_length_kv layer)."""
        first_shared = self.num_hidden_layers - self.num_kv_shared_layers
        if layer < first_shared:
            return layer
        kind = self.layer_types[layer]
        owners = [i for i in range(first_shared) if self.layer_types[i] == kind]
        if not owners:
            raise ValueError(f"KV-shared layer {layer} ({kind}) has no earlier {kind} layer to read keys from")
        return owners[-1]

    def head_size(self, layer: int) -> int:
        return int(self._overrides.get(layer, {}).get("head_dim", self.head_dim))

    def kv_heads(self, layer: int) -> int:
        return int(self._overrides.get(layer, {}).get("num_key_value_heads", self.num_key_value_heads))

    def window(self, layer: int) -> int | None:
        return self.sliding_window if self.layer_types[layer] == SLIDING else None

    def kv_source(self, layer: int) -> int:
        return self._sources[layer]

    def shares_kv(self, layer: int) -> bool:
        return self._sources[layer] != layer

    def keys_equal_values(self, layer: int) -> bool:
        """Full-attention layers of K=V models project keys only; the values are the raw keys, normed."""
        return self.attention_k_eq_v and self.layer_types[layer] == FULL

    def mlp_width(self, layer: int) -> int:
        return self.intermediate_size * (2 if self.use_double_wide_mlp and self.shares_kv(layer) else 1)


@dataclass
class ModelArgs:
    """A whole config: a nested vision-language one (`text_config`; its vision and audio towers are not built) or
    a flat text-only one. What the loader reads (vocab size, context) is the decoder's."""

    model_type: str
    text: TextArgs
    towers: tuple[str, ...] = ()  # the multimodal towers the config describes, which mlxd leaves out

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ModelArgs:
        nested = config.get("text_config")
        text = TextArgs.from_dict(nested if isinstance(nested, dict) else config)
        towers = tuple(k.removesuffix("_config") for k in ("vision_config", "audio_config") if config.get(k))
        return cls(config["model_type"], text, towers)

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    @property
    def max_position_embeddings(self) -> int:
        return self.text.max_position_embeddings
