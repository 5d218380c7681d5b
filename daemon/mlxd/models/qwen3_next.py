"""Qwen3-Next (`Qwen3NextForCausalLM`): the architecture Qwen3.5 MoE grew out of, computed by models/qwen3_5.py and
qwen3_5_moe.py. It differs only on disk and in which layers are MoE:

- A DeltaNet layer stores two fused input projections whose output rows are grouped per key head (transformers'
  `fix_query_key_value_ordering`): `in_proj_qkvz` holds, for each key head h, [q_h (Dk) | k_h (Dk) | v (r·Dv) |
  z (r·Dv)] with r = Hv / Hk value heads per key head, and `in_proj_ba` [b (r) | a (r)]. sanitize regroups the rows
  into Qwen3.5's `in_proj_qkv` ([q | k | v], each over all heads), `in_proj_z`, `in_proj_b` and `in_proj_a`, so the
  compute path (and the fused `in_proj` the loader may build) is Qwen3.5's. Value head h·r + i is head h's i-th
  in both layouts, so the value heads keep their order.
- Layer i has the MoE block (routed experts + sigmoid-gated shared expert) iff i is not in `mlp_only_layers`,
  `num_experts` > 0 and (i + 1) % `decoder_sparse_step` == 0, else a dense MLP of `intermediate_size`; the router
  renormalizes the k kept probabilities iff `norm_topk_prob`.
- Experts are stored one by one (`mlp.experts.{e}.gate_proj.weight`...), as transformers saves them.

Everything else is Qwen3.5's: (1 + w) RMSNorms (Gemma 3's), the plain-w gated norm, gated full attention with a
partial rotary embedding (`partial_rotary_factor`, 0.25 when absent, at the top of published configs), the depthwise
causal conv over [q | k | v] and the gated delta rule. mlx-lm conversions keep the fused names, with the norms and
conv weights already moved (models/qwen3_5.py `from_checkpoint_layout` takes both), quantized or not: regrouping
rows moves a quantized layer's codes, scales and biases alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import llama, qwen3_5, qwen3_5_moe
from mlxd.models.projections import GATE_UP, PARAMETERS, Projections


@dataclass
class ModelArgs(qwen3_5_moe.ModelArgs):
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    norm_topk_prob: bool = True

    @staticmethod
    def defaults(d: dict[str, Any]) -> dict[str, Any]:
        # Configs write null for "no dense-only layer" (transformers turns it into []).
        return {**qwen3_5_moe.ModelArgs.defaults(d), "mlp_only_layers": d.get("mlp_only_layers") or []}

    def sparse(self, layer: int) -> bool:
        """Whether layer `layer`'s MLP is the MoE block (transformers' Qwen3NextDecoderLayer rule)."""
        return (layer not in self.mlp_only_layers and self.num_experts > 0
                and (layer + 1) % self.decoder_sparse_step == 0)


class Model(qwen3_5_moe.Model):
    args: ModelArgs
    # The layers sanitize splits: a quantized folder's per-layer bits for one hold for its parts (loading/weights.py).
    SPLIT_LAYERS = {"in_proj_qkvz": ("in_proj_qkv", "in_proj_z"), "in_proj_ba": ("in_proj_b", "in_proj_a")}

    def mlp(self, args: qwen3_5.ModelArgs, layer: int, fused: frozenset[str]) -> nn.Module:
        assert isinstance(args, ModelArgs)
        if args.sparse(layer):
            path = f"model.layers.{layer}.mlp"
            return qwen3_5_moe.SharedExpertMoe(args, f"{path}.switch_mlp" in fused, f"{path}.shared_expert" in fused,
                                               renormalize=args.norm_topk_prob)
        return llama.MLP(args, f"model.layers.{layer}.mlp" in fused)

    def mlp_projections(self, layer: int) -> dict[str, Projections]:
        if self.args.sparse(layer):
            return super().mlp_projections(layer)
        return {f"model.layers.{layer}.mlp": GATE_UP}

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        return super().sanitize(split_linear_projections(weights, self.args))


def split_linear_projections(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """`weights` with each DeltaNet layer's fused `in_proj_qkvz` / `in_proj_ba` (every array they have: weight, and a
    quantized layer's scales and biases, all with the output rows first) regrouped under Qwen3.5's four names.
    Layers split already, or stored under Qwen3.5's names, stay as they are."""
    hk, dk, dv = args.linear_num_key_heads, args.linear_key_head_dim, args.linear_value_head_dim
    per_key = args.linear_num_value_heads // hk
    if per_key * hk != args.linear_num_value_heads:
        raise ValueError(f"linear_num_value_heads {args.linear_num_value_heads} is not a multiple of "
                         f"linear_num_key_heads {hk}")
    out = dict(weights)
    for name in weights:
        for param in PARAMETERS:
            if name.endswith(f".in_proj_qkvz.{param}"):
                prefix = name.removesuffix(f"in_proj_qkvz.{param}")
                q, k, v, z = _per_key_head(out.pop(name), hk, [dk, dk, per_key * dv, per_key * dv])
                out[f"{prefix}in_proj_qkv.{param}"] = mx.concatenate([q, k, v], axis=0)
                out[f"{prefix}in_proj_z.{param}"] = z
            elif name.endswith(f".in_proj_ba.{param}"):
                prefix = name.removesuffix(f"in_proj_ba.{param}")
                b, a = _per_key_head(out.pop(name), hk, [per_key, per_key])
                out[f"{prefix}in_proj_b.{param}"], out[f"{prefix}in_proj_a.{param}"] = b, a
    return out


def _per_key_head(fused: mx.array, key_heads: int, widths: list[int]) -> list[mx.array]:
    """The parts of rows grouped per key head ([part 0 | part 1 | ...] for head 0, then head 1...), each part's
    rows for all heads together, head by head: [key_heads * width, ...] per part."""
    if fused.shape[0] != key_heads * sum(widths):
        raise ValueError(f"a fused projection has {fused.shape[0]} rows, not {key_heads} key heads x {sum(widths)}")
    rest = fused.shape[1:]
    grouped = fused.reshape(key_heads, sum(widths), *rest)
    cuts = [sum(widths[: i + 1]) for i in range(len(widths) - 1)]
    return [part.reshape(-1, *rest) for part in mx.split(grouped, cuts, axis=1)]
