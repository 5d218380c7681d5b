"""gpt-oss: sliding-window and full-attention layers in turn (`layer_types`), a learned sink logit per attention
head, YaRN rope, and in every layer routed experts with biases and a clamped SwiGLU, the router's softmax taken
over the k experts it keeps. Published checkpoints hold the experts in MXFP4 (loading/mxfp4.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import llama, moe, ops
from mlxd.models.projections import GATE_UP, QKV, Projections

# GptOssConfig's rope: YaRN with the published gpt-oss-20b/120b values (truncate false: transformers keeps the
# correction range unrounded, as OpenAI's reference does).
DEFAULT_ROPE_THETA = 150000.0
DEFAULT_ROPE = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                "original_max_position_embeddings": 4096, "rope_theta": DEFAULT_ROPE_THETA}


@dataclass
class ModelArgs(llama.ModelArgs):
    rms_norm_eps: float = 1e-5
    num_key_value_heads: int = 8
    head_dim: int = 64  # null in config.json: hidden_size // heads, as transformers reads it
    max_position_embeddings: int | None = 131072
    rope_parameters: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_ROPE))
    attention_bias: bool = True
    sliding_window: int | None = 128
    num_local_experts: int = 128
    num_experts_per_tok: int = 0  # transformers' name; 0 (or null): experts_per_token, else 4
    # The name in OpenAI's own configs, which published HF configs carry beside num_experts_per_tok.
    experts_per_token: int | None = field(default=None, compare=False)
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702  # new in transformers 5.2x; published configs lack it (1.702 hard-coded before)

    def __post_init__(self) -> None:
        self.num_experts_per_tok = self.num_experts_per_tok or self.experts_per_token or 4
        if not self.layer_types:  # GptOssConfig's default: even layers sliding, odd ones full
            self.layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention"
                                for i in range(self.num_hidden_layers)]
        # A v4 config with rope_scaling and no rope_theta means GptOssConfig's theta (loading/config.py leaves
        # the key out rather than guess).
        self.rope_parameters = {"rope_theta": DEFAULT_ROPE_THETA, **self.rope_parameters}
        super().__post_init__()

    @property
    def attention_sinks(self) -> bool:
        return True


class MLPBlock(moe.SparseMoe):
    """The routed experts under gpt-oss's router name (`router`), with biases and the clamped SwiGLU."""

    def __init__(self, args: ModelArgs, fused: bool = False):
        limit, alpha = args.swiglu_limit, args.swiglu_alpha

        def activation(gate: mx.array, up: mx.array, tokens: int) -> mx.array:
            return ops.clamped_swiglu(gate, up, limit, alpha)

        # Its softmax over the k kept logits is what a renormalizing router computes (moe.route).
        super().__init__(args.hidden_size, args.intermediate_size, args.num_local_experts,
                         moe.Routing(args.num_experts_per_tok), router_bias=True,
                         expert_bias=True, activation=activation, fused=fused, router_name="router")


class Model(llama.Model):
    """llama's decoder (attention with biases and, through ModelArgs.attention_sinks, sinks; per-layer windows
    and caches from `layer_types`) with an MLPBlock in every layer."""

    args: ModelArgs

    def block(self, args: llama.ModelArgs, layer: int, fused: frozenset[str]) -> nn.Module:
        assert isinstance(args, ModelArgs)
        path = f"model.layers.{layer}"
        return llama.TransformerBlock(args, f"{path}.self_attn" in fused,
                                      mlp=MLPBlock(args, f"{path}.mlp.switch_mlp" in fused))

    def fusable_projections(self) -> dict[str, Projections]:
        return {f"model.layers.{i}.{name}": group for i in range(self.args.num_hidden_layers)
                for name, group in (("self_attn", QKV), ("mlp.switch_mlp", GATE_UP))}

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        for layer in range(self.args.num_hidden_layers):
            weights = _stacked_experts(weights, f"model.layers.{layer}.mlp")
        return super().sanitize(weights)


def _stacked_experts(weights: dict[str, mx.array], prefix: str) -> dict[str, mx.array]:
    """`weights` with the experts under `{prefix}.experts.` as SwitchGLU holds them, `{prefix}.switch_mlp.{gate,up,
    down}_proj.{weight,scales,biases,bias}` with weights [E, out, in]. They come as
    - transformers' float tensors: `gate_up_proj` [E, in, 2I] and `down_proj` [E, I, out], used as x @ W;
    - MXFP4, after loading/mxfp4.py: `gate_up_proj.{weight,scales}` and `down_proj.{weight,scales}`, [E, out, ...];
    - beside either, `gate_up_proj_bias` [E, 2I] and `down_proj_bias` [E, out];
    - mlx-lm's conversions: `{gate,up,down}_proj.*`, as ours.
    gate_up's rows (its bias's entries) alternate gate, up, gate, up...: split into two halves. Every array comes
    out row-contiguous (MLX's CUDA quantized matmul has no kernel for strided weights). Nothing is left under
    `experts.`, so this may run on its own output."""
    source, ours = f"{prefix}.experts.", f"{prefix}.switch_mlp."
    out: dict[str, mx.array] = {}
    for key, value in weights.items():
        if not key.startswith(source):
            out[key] = value
            continue
        layer, _, kind = key.removeprefix(source).partition(".")
        if layer.endswith("_bias"):
            layer, kind = layer.removesuffix("_bias"), "bias"
        elif not kind:  # transformers' float experts, [E, in, out]
            value, kind = mx.contiguous(value.swapaxes(-1, -2)), "weight"
        if layer == "gate_up_proj":
            out[f"{ours}gate_proj.{kind}"] = mx.contiguous(value[:, 0::2])
            out[f"{ours}up_proj.{kind}"] = mx.contiguous(value[:, 1::2])
        else:
            out[f"{ours}{layer}.{kind}"] = value
    return out
