"""Mixtral: Mistral's attention (an optional sliding window) with a sparse MoE of top-2 experts, always
renormalized, in every layer, held under the checkpoints' name `block_sparse_moe`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import llama, moe, sharding
from mlxd.models.base import AttentionCache, Mask
from mlxd.models.projections import GATE_UP, QKV, Projections

EXPERT_PROJECTIONS = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}  # the checkpoint's -> ours


@dataclass
class ModelArgs(llama.ModelArgs):
    rope_parameters: dict[str, Any] = field(
        default_factory=lambda: {"rope_type": "default", "rope_theta": 1000000.0})  # MixtralConfig's default
    num_local_experts: int = 8
    num_experts_per_tok: int = 2


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, fused_attention: bool = False, fused_experts: bool = False):
        super().__init__()
        self.self_attn = llama.Attention(args, fused_attention)
        self.block_sparse_moe = moe.SparseMoe(args.hidden_size, args.intermediate_size, args.num_local_experts,
                                              moe.Routing(args.num_experts_per_tok), fused=fused_experts)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, mask: Mask, cache: AttentionCache | None = None) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), mask, cache)
        return h + self.block_sparse_moe(self.post_attention_layernorm(h))


class Model(llama.Model):
    args: ModelArgs

    def block(self, args: llama.ModelArgs, layer: int, fused: frozenset[str]) -> nn.Module:
        assert isinstance(args, ModelArgs)
        path = f"model.layers.{layer}"
        return TransformerBlock(args, f"{path}.self_attn" in fused, f"{path}.block_sparse_moe.switch_mlp" in fused)

    def fusable_projections(self) -> dict[str, Projections]:
        return {f"model.layers.{i}.{name}": group for i in range(self.args.num_hidden_layers)
                for name, group in (("self_attn", QKV), ("block_sparse_moe.switch_mlp", GATE_UP))}

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        for layer in range(self.args.num_hidden_layers):
            weights = moe.stack_experts(weights, f"model.layers.{layer}.block_sparse_moe",
                                        self.args.num_local_experts, EXPERT_PROJECTIONS)
        return super().sanitize(weights)

    def shard(self, group: mx.distributed.Group) -> None:
        sharding.shard_decoder_layers(self.layers, group, feed_forward="block_sparse_moe")
