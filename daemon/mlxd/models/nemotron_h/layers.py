"""Nemotron-H's other mixers: attention without any positional encoding, the ungated relu² MLP, and the MoE layer
(GLM-4.7-Flash's sigmoid group-limited router over relu² experts, plus shared experts); and the block that wraps
each mixer with a pre-norm and a residual."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import moe, ops
from mlxd.models.base import AttentionCache, Mask
from mlxd.models.glm4_moe_lite.experts import GroupLimitedRouter
from mlxd.models.nemotron_h.args import ATTENTION, MAMBA, MLP, ModelArgs
from mlxd.models.nemotron_h.mamba2 import Mamba2Mixer
from mlxd.models.projections import QKV, add_linears
from mlxd.models.recurrent_cache import RecurrentState


def relu2(x: mx.array) -> mx.array:
    return mx.square(mx.maximum(x, 0))


class Attention(nn.Module):
    """Grouped-query softmax attention; no rotary embedding (the Mamba-2 layers carry the order)."""

    def __init__(self, args: ModelArgs, fused: bool = False):
        super().__init__()
        assert args.head_dim is not None
        self.n_heads, self.n_kv_heads, self.head_dim = args.num_attention_heads, args.num_key_value_heads, args.head_dim
        self.scale = self.head_dim**-0.5
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.fused, self._split = fused, [q_dim, q_dim + kv_dim]
        add_linears(self, QKV, args.hidden_size, (q_dim, kv_dim, kv_dim), args.attention_bias, fused)
        self.o_proj = nn.Linear(q_dim, args.hidden_size, bias=args.attention_bias)

    def __call__(self, x: mx.array, mask: Mask, cache: AttentionCache | None = None) -> mx.array:
        B, L, _ = x.shape
        if self.fused:
            q, k, v = mx.split(self.qkv_proj(x), self._split, axis=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        k = k.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = v.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        out = ops.attention(q, k, v, self.scale, mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class ReluSquaredMLP(nn.Module):
    """down(relu(up x)^2): no gate."""

    def __init__(self, dims: int, hidden: int, bias: bool = False):
        super().__init__()
        self.up_proj = nn.Linear(dims, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dims, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(relu2(self.up_proj(x)))


class ExpertsMoe(moe.SparseMoe):
    """Routed relu² experts (moe.SwitchMLP, stacked `switch_mlp.fc1`/`fc2` as mlx-lm names them) chosen by the
    group-limited sigmoid router `gate`, plus the shared experts on every token."""

    def __init__(self, args: ModelArgs):
        experts = moe.SwitchMLP(args.hidden_size, args.moe_intermediate_size, args.n_routed_experts, relu2,
                                bias=args.mlp_bias)
        super().__init__(args.hidden_size, args.moe_intermediate_size, args.n_routed_experts,
                         moe.Routing(args.num_experts_per_tok), switch_mlp=experts)
        self.gate = GroupLimitedRouter(args)  # in place of SparseMoe's softmax router
        self.shared_experts = ReluSquaredMLP(args.hidden_size, args.moe_shared_expert_intermediate_size, args.mlp_bias)

    def _forward(self, x: mx.array) -> mx.array:
        indices, weights = self.gate(x)
        y = self.switch_mlp(x, indices, tokens=x.shape[-2])  # x: [B, L, dims]
        return ops.combine_experts(y, weights, plus=self.shared_experts(x))


class Block(nn.Module):
    """h + mixer(norm(h)), the mixer one of the four kinds."""

    def __init__(self, args: ModelArgs, layer: int, fused: bool = False):
        super().__init__()
        self.kind = args.kind(layer)
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.layer_norm_epsilon)
        self.mixer: nn.Module
        if self.kind == MAMBA:
            self.mixer = Mamba2Mixer(args)
        elif self.kind == ATTENTION:
            self.mixer = Attention(args, fused)
        elif self.kind == MLP:
            self.mixer = ReluSquaredMLP(args.hidden_size, args.intermediate_size, args.mlp_bias)
        else:
            self.mixer = ExpertsMoe(args)

    def __call__(self, x: mx.array, mask: Mask, cache: AttentionCache | RecurrentState | None) -> mx.array:
        normed = self.norm(x)
        if self.kind == MAMBA:
            return x + self.mixer(normed, cache)
        if self.kind == ATTENTION:
            return x + self.mixer(normed, mask, cache)
        return x + self.mixer(normed)
