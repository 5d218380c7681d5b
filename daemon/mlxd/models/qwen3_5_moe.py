"""Qwen3.5 MoE: the Qwen3.5 hybrid (models/qwen3_5.py) with a MoE block as every layer's MLP: softmax routing over
the experts, the k best renormalized (models/moe.py), plus a shared expert whose output a per-token sigmoid gate
scales (HYBRID_NOTES.md §2).

Published checkpoints hold each layer's experts fused, `experts.gate_up_proj` [E, 2I, H] (gate first) and
`experts.down_proj` [E, H, I]; transformers 5's save_pretrained writes them per expert (`experts.{e}.gate_proj.
weight`...). Both load."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import moe, qwen3_5
from mlxd.models.projections import GATE_UP, GatedMLP, Projections

EXPERT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass
class ModelArgs(qwen3_5.ModelArgs):
    num_experts: int = 512
    num_experts_per_tok: int = 10
    moe_intermediate_size: int = 512
    shared_expert_intermediate_size: int = 512

    @staticmethod
    def defaults(d: dict[str, Any]) -> dict[str, Any]:
        # No dense MLP, so configs name no intermediate_size; the shared expert's stands in (unused).
        return {"intermediate_size": d.get("shared_expert_intermediate_size", 512), **d}


class SharedExpertMoe(moe.SparseMoe):
    """Routed experts plus a shared expert, gated by sigmoid(shared_expert_gate x) per token. Qwen3.5's router always
    renormalizes the k kept probabilities; Qwen3-Next's (models/qwen3_next.py) iff its config says so."""

    def __init__(self, args: ModelArgs, fused_experts: bool, fused_shared: bool, renormalize: bool = True):
        routing = moe.Routing(args.num_experts_per_tok, renormalize=renormalize)
        super().__init__(args.hidden_size, args.moe_intermediate_size, args.num_experts, routing,
                         fused=fused_experts)
        self.shared_expert = GatedMLP(args.hidden_size, args.shared_expert_intermediate_size, "silu", args.mlp_bias,
                                      fused_shared)
        self.shared_expert_gate = nn.Linear(args.hidden_size, 1, bias=False)

    def _forward(self, x: mx.array) -> mx.array:
        return super()._forward(x) + mx.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)


class Model(qwen3_5.Model):
    args: ModelArgs

    def mlp(self, args: qwen3_5.ModelArgs, layer: int, fused: frozenset[str]) -> nn.Module:
        assert isinstance(args, ModelArgs)
        path = f"model.layers.{layer}.mlp"
        return SharedExpertMoe(args, f"{path}.switch_mlp" in fused, f"{path}.shared_expert" in fused)

    def mlp_projections(self, layer: int) -> dict[str, Projections]:
        path = f"model.layers.{layer}.mlp"
        return {f"{path}.switch_mlp": GATE_UP, f"{path}.shared_expert": GATE_UP}

    def sanitize_mlp(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        names = {name: name for name in EXPERT_PROJECTIONS}
        for layer in range(self.args.num_hidden_layers):
            prefix = f"model.layers.{layer}.mlp"
            weights = _split_fused_experts(weights, prefix)
            weights = moe.stack_experts(weights, prefix, self.args.num_experts, names)
        return weights


def _split_fused_experts(weights: dict[str, mx.array], prefix: str) -> dict[str, mx.array]:
    """The published fused experts of one layer under switch_mlp's names (gate_up split in halves, gate first)."""
    gate_up, down = f"{prefix}.experts.gate_up_proj", f"{prefix}.experts.down_proj"
    if gate_up not in weights:
        return weights
    out = dict(weights)
    gate, up = mx.split(out.pop(gate_up), 2, axis=1)
    out[f"{prefix}.switch_mlp.gate_proj.weight"] = gate
    out[f"{prefix}.switch_mlp.up_proj.weight"] = up
    out[f"{prefix}.switch_mlp.down_proj.weight"] = out.pop(down)
    return out
