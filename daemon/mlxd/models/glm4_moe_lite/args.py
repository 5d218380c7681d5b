"""GLM-4.7-Flash's configuration (transformers' Glm4MoeLiteConfig), in either layout loading/config.py reads."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mlxd.models.base import BaseModelArgs


@dataclass
class ModelArgs(BaseModelArgs):
    """Defaults are Glm4MoeLiteConfig's (the published GLM-4.7-Flash)."""

    model_type: str
    vocab_size: int = 154880
    hidden_size: int = 2048
    num_hidden_layers: int = 47
    intermediate_size: int = 10240  # the dense layers' MLP
    num_attention_heads: int = 20
    q_lora_rank: int | None = 768  # None: one full-rank q_proj (DeepSeek-V2-Lite's layout)
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 192
    qk_rope_head_dim: int = 64
    v_head_dim: int = 256
    attention_bias: bool = False
    rope_parameters: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    rope_interleave: bool = True  # published configs lack the key; transformers' default
    n_routed_experts: int = 64
    n_shared_experts: int = 1
    num_experts_per_tok: int = 4
    moe_intermediate_size: int = 1536
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.8
    topk_method: str = "noaux_tc"
    # Which layers route to experts: transformers 5 writes `mlp_layer_types`; published configs say
    # `first_k_dense_replace` (transformers ignores it, its default list agrees for GLM-4.7-Flash).
    mlp_layer_types: list[str] = field(default_factory=list)
    first_k_dense_replace: int | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    max_position_embeddings: int | None = 202752

    def __post_init__(self) -> None:
        if self.topk_method != "noaux_tc":
            raise ValueError(f"topk_method {self.topk_method!r} is not supported (only 'noaux_tc')")
        if self.n_routed_experts % self.n_group or not 0 < self.topk_group <= self.n_group:
            raise ValueError(f"{self.n_routed_experts} experts cannot form {self.n_group} groups, "
                             f"{self.topk_group} of them kept")
        if not self.mlp_layer_types:
            dense = 1 if self.first_k_dense_replace is None else self.first_k_dense_replace
            self.mlp_layer_types = ["dense" if i < dense else "sparse" for i in range(self.num_hidden_layers)]
        if len(self.mlp_layer_types) != self.num_hidden_layers:
            raise ValueError(f"mlp_layer_types names {len(self.mlp_layer_types)} layers, not {self.num_hidden_layers}")

    def sparse(self, layer: int) -> bool:
        return self.mlp_layer_types[layer] == "sparse"

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def attention_scale(self) -> float:
        """qk_head_dim^-1/2, times mscale^2 under a scaled rope with `mscale_all_dim` (transformers'
        yarn_apply_mscale; DeepSeek's long-context checkpoints)."""
        scale = self.qk_head_dim**-0.5
        params = self.rope_parameters
        all_dim, factor = params.get("mscale_all_dim"), float(params.get("factor") or 1.0)
        if params.get("rope_type", "default") != "default" and all_dim and factor > 1:
            mscale = 0.1 * float(all_dim) * math.log(factor) + 1.0
            scale *= mscale * mscale
        return scale
