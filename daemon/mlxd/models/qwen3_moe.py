"""Qwen3-MoE: Qwen3's attention (RMSNorm on each query and key head, explicit head_dim) with routed experts in
place of the MLP, except in the layers that stay dense (`mlp_only_layers`, `decoder_sparse_step`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import llama, moe, qwen3
from mlxd.models.projections import GATE_UP, Projections

EXPERT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")  # the checkpoint's per-expert names are ours


@dataclass
class ModelArgs(qwen3.ModelArgs):
    head_dim: int = 0  # Qwen3MoeConfig has no head_dim default: hidden_size // heads
    num_experts: int = 128  # published configs' name
    num_local_experts: int | None = None  # transformers 5 writes num_experts under this name (its attribute_map)
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 768
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.num_local_experts is not None:
            self.num_experts = self.num_local_experts
        self.mlp_only_layers = self.mlp_only_layers or []  # null: no dense layer
        super().__post_init__()

    def sparse(self, layer: int) -> bool:
        """Whether layer `layer` routes to experts (transformers' Qwen3MoeDecoderLayer), else a dense MLP."""
        return (layer not in self.mlp_only_layers and self.num_experts > 0
                and (layer + 1) % self.decoder_sparse_step == 0)


class Model(llama.Model):
    args: ModelArgs

    def block(self, args: llama.ModelArgs, layer: int, fused: frozenset[str]) -> nn.Module:
        assert isinstance(args, ModelArgs)
        path = f"model.layers.{layer}"
        if not args.sparse(layer):
            return super().block(args, layer, fused)
        routing = moe.Routing(args.num_experts_per_tok, renormalize=args.norm_topk_prob)
        experts = moe.SparseMoe(args.hidden_size, args.moe_intermediate_size, args.num_experts, routing,
                                fused=f"{path}.mlp.switch_mlp" in fused)
        return llama.TransformerBlock(args, f"{path}.self_attn" in fused, mlp=experts)

    def fusable_projections(self) -> dict[str, Projections]:
        groups = super().fusable_projections()
        for layer in self._sparse_layers():
            del groups[f"model.layers.{layer}.mlp"]
            groups[f"model.layers.{layer}.mlp.switch_mlp"] = GATE_UP
        return groups

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        names = {name: name for name in EXPERT_PROJECTIONS}
        for layer in self._sparse_layers():
            weights = moe.stack_experts(weights, f"model.layers.{layer}.mlp", self.args.num_experts, names)
        return super().sanitize(weights)

    def _sparse_layers(self) -> list[int]:
        return [i for i in range(self.args.num_hidden_layers) if self.args.sparse(i)]
