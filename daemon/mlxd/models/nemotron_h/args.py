"""Nemotron-H's configuration (transformers' NemotronHConfig), in either layout: published configs give the layers
as `hybrid_override_pattern` (one character per layer) beside `num_hidden_layers`; transformers 5 writes
`layers_block_type` (one name per layer) and no layer count."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mlxd.models.base import BaseModelArgs

MAMBA, ATTENTION, MLP, MOE = "M", "*", "-", "E"
# layers_block_type's names (transformers 5.24 writes the first of each pair, earlier versions the second).
_BLOCK_NAMES = {"linear_attention": MAMBA, "mamba": MAMBA, "full_attention": ATTENTION, "attention": ATTENTION,
                "mlp": MLP, "moe": MOE}


@dataclass
class ModelArgs(BaseModelArgs):
    """Defaults are NemotronHConfig's."""

    model_type: str
    vocab_size: int = 131072
    hidden_size: int = 4096
    hybrid_override_pattern: str = ""
    layers_block_type: list[str] = field(default_factory=list)
    num_hidden_layers: int = 0  # 0: as many as the pattern names
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = False
    max_position_embeddings: int | None = 4096
    # Attention (no positional encoding)
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int | None = None
    attention_head_dim: int | None = None  # what earlier (remote-code) configs call head_dim
    attention_bias: bool = False
    # Dense MLP: down(relu(up x)^2)
    intermediate_size: int = 21504
    mlp_bias: bool = False
    mlp_hidden_act: str = "relu2"
    # Mamba-2
    mamba_num_heads: int = 128
    mamba_head_dim: int = 64
    ssm_state_size: int = 128
    n_groups: int = 8
    conv_kernel: int = 4
    use_conv_bias: bool = True
    mamba_proj_bias: bool = False
    mamba_hidden_act: str = "silu"
    chunk_size: int = 128
    time_step_limit: list[float] = field(default_factory=lambda: [0.0, math.inf])
    # Experts: GLM-style sigmoid routing within groups, plus shared experts
    n_routed_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 7688
    moe_shared_expert_intermediate_size: int = 7688
    moe_latent_size: int | None = None
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0

    def __post_init__(self) -> None:
        if not self.hybrid_override_pattern and self.layers_block_type:
            unknown = sorted(set(self.layers_block_type) - set(_BLOCK_NAMES))
            if unknown:
                raise ValueError(f"unknown layers_block_type entries {unknown}")
            self.hybrid_override_pattern = "".join(_BLOCK_NAMES[name] for name in self.layers_block_type)
        pattern = self.hybrid_override_pattern
        if not pattern or set(pattern) - {MAMBA, ATTENTION, MLP, MOE}:
            raise ValueError(f"hybrid_override_pattern {pattern!r} must be made of M, *, - and E")
        self.num_hidden_layers = self.num_hidden_layers or len(pattern)
        if len(pattern) != self.num_hidden_layers:
            raise ValueError(f"the layer pattern names {len(pattern)} layers, not {self.num_hidden_layers}")
        self.head_dim = self.head_dim or self.attention_head_dim or 128  # NemotronHConfig's default
        if self.moe_latent_size is not None:
            raise ValueError("latent MoE projections (moe_latent_size) are not supported")
        for name in ("mlp_hidden_act", "mamba_hidden_act"):
            want = "relu2" if name == "mlp_hidden_act" else "silu"
            if getattr(self, name) != want:
                raise ValueError(f"{name} {getattr(self, name)!r} is not supported (only {want!r})")
        if self.mamba_num_heads % self.n_groups or self.n_routed_experts % self.n_group:
            raise ValueError("mamba heads must split evenly into n_groups, experts into n_group")

    def kind(self, layer: int) -> str:
        """Layer `layer`'s mixer: MAMBA, ATTENTION, MLP or MOE."""
        return self.hybrid_override_pattern[layer]

    @property
    def mamba_intermediate(self) -> int:
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the Mamba-2 conv: [x | B | C]."""
        return self.mamba_intermediate + 2 * self.n_groups * self.ssm_state_size
