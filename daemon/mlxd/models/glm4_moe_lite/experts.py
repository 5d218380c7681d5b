"""GLM-4.7-Flash's MoE layer: routed experts whose router scores them with a sigmoid and picks them within the best
groups (DeepSeek-V3's "noaux_tc"), plus shared experts (a SwiGLU, as the first layers' dense MLP)."""

from __future__ import annotations

from typing import Protocol

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import moe, ops
from mlxd.models.glm4_moe_lite.args import ModelArgs
from mlxd.models.projections import GatedMLP


class GroupRoutingArgs(Protocol):
    """What the router reads of a config (GLM-4.7-Flash's and Nemotron-H's name them alike)."""

    hidden_size: int
    n_routed_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    norm_topk_prob: bool
    routed_scaling_factor: float


class GroupLimitedRouter(nn.Module):
    """transformers' Glm4MoeLiteTopkRouter, in float32 as it computes: s = sigmoid(x Wᵀ); experts are chosen by
    s + e_score_correction_bias, only within the `topk_group` groups (of `n_group` equal ones) whose two best
    choice scores sum highest; the chosen experts are weighted by their unbiased s, divided by the sum of those
    (when norm_topk_prob) and times routed_scaling_factor."""

    def __init__(self, args: GroupRoutingArgs):
        super().__init__()
        self.weight = mx.zeros((args.n_routed_experts, args.hidden_size))
        self.e_score_correction_bias = mx.zeros((args.n_routed_experts,))
        self.top_k, self.n_group, self.topk_group = args.num_experts_per_tok, args.n_group, args.topk_group
        self.normalize, self.scaling = args.norm_topk_prob, args.routed_scaling_factor

    def __call__(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """The experts [..., k] (in no particular order) and their weights [..., k] in x's dtype."""
        logits = x.astype(mx.float32) @ self.weight.astype(mx.float32).T
        return ops.route_sigmoid(logits, self.e_score_correction_bias.astype(mx.float32), self.top_k, self.normalize,
                                 self.scaling, self.n_group, self.topk_group, weights_dtype=x.dtype)


class SharedExpertMoe(moe.SparseMoe):
    """The routed experts (models/moe.py's stacked SwitchGLU) under the group-limited router `gate`, plus the
    always-on shared experts (one SwiGLU of n_shared_experts × moe_intermediate_size, no gate of its own)."""

    def __init__(self, args: ModelArgs, fused_experts: bool = False, fused_shared: bool = False):
        super().__init__(args.hidden_size, args.moe_intermediate_size, args.n_routed_experts,
                         moe.Routing(args.num_experts_per_tok), fused=fused_experts)
        self.gate = GroupLimitedRouter(args)  # in place of SparseMoe's softmax router
        self.shared_experts = GatedMLP(args.hidden_size, args.moe_intermediate_size * args.n_shared_experts,
                                       "silu", fused=fused_shared)

    COMPILED_DECODE = True  # see moe.SparseMoe

    def _forward(self, x: mx.array) -> mx.array:
        indices, weights = self.gate(x)
        y = self.switch_mlp(x, indices, tokens=x.shape[-2])  # x: [B, L, dims]
        return ops.combine_experts(y, weights, plus=self.shared_experts(x))
