"""Gemma 4's decoder layer: attention, the gated GELU MLP (twice as wide on KV-shared layers when the config says),
the MoE block beside the MLP (26B-A4B), the per-layer input (PLE) branch, and the layer's output scale."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import moe, ops
from mlxd.models.base import AttentionCache, Mask
from mlxd.models.gemma4.attention import Attention, KeysValues, rms_norm_no_weight
from mlxd.models.gemma4.config import TextArgs
from mlxd.models.projections import GatedMLP


def gelu_tanh(gate: mx.array, up: mx.array, tokens: int) -> mx.array:
    """gelu_pytorch_tanh(gate) * up, for the experts."""
    return ops.gated_activation(gate, up, "gelu_tanh", tokens)


class Router(nn.Module):
    """Scores experts on the RMS-normed residual stream times a learned per-feature `scale` and hidden^-1/2."""

    def __init__(self, dim: int, experts: int, eps: float):
        super().__init__()
        self.proj = nn.Linear(dim, experts, bias=False)
        self.scale = mx.ones((dim,))
        self.per_expert_scale = mx.ones((experts,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        x = rms_norm_no_weight(x, self.eps) * self.scale * (x.shape[-1] ** -0.5)
        return self.proj(x)


class MoeBlock(moe.SparseMoe):
    """The experts beside the dense MLP: routed on the residual stream, they run on its separately normed copy.
    Softmax over every expert, the k best renormalized to sum 1, then each weight times its expert's
    `per_expert_scale`. Gate and up are one stacked layer, as every Gemma 4 checkpoint (and GGUF file) holds them,
    so a quantized file's codes load as they are."""

    def __init__(self, args: TextArgs):
        assert args.num_experts and args.top_k_experts and args.moe_intermediate_size
        super().__init__(args.hidden_size, args.moe_intermediate_size, args.num_experts,
                         moe.Routing(args.top_k_experts, renormalize=True), activation=gelu_tanh, fused=True,
                         router_name="router")
        self.router = Router(args.hidden_size, args.num_experts, args.rms_norm_eps)

    def _forward(self, x: mx.array, residual: mx.array | None = None) -> mx.array:
        """The experts' output for x [B, L, dims], routed on `residual` (x itself when None)."""
        indices, weights = moe.route(self.router(x if residual is None else residual), self.routing)
        weights = weights * self.router.per_expert_scale[indices].astype(weights.dtype)
        y = self.switch_mlp(x, indices, tokens=x.shape[-2])
        return ops.combine_experts(y, weights)


class DecoderLayer(nn.Module):
    def __init__(self, args: TextArgs, layer: int, fused: frozenset[str] = frozenset()):
        """`fused`: which of "self_attn" and "mlp" the loader fused."""
        super().__init__()
        dim, eps = args.hidden_size, args.rms_norm_eps
        self.self_attn = Attention(args, layer, "self_attn" in fused)
        self.mlp = GatedMLP(dim, args.mlp_width(layer), "gelu_tanh", fused="mlp" in fused)
        self.input_layernorm = nn.RMSNorm(dim, eps=eps)
        self.post_attention_layernorm = nn.RMSNorm(dim, eps=eps)
        self.pre_feedforward_layernorm = nn.RMSNorm(dim, eps=eps)
        self.post_feedforward_layernorm = nn.RMSNorm(dim, eps=eps)
        self.layer_scalar = mx.ones((1,))
        self.has_moe = args.enable_moe_block
        if self.has_moe:
            self.moe = MoeBlock(args)
            self.pre_feedforward_layernorm_2 = nn.RMSNorm(dim, eps=eps)
            self.post_feedforward_layernorm_1 = nn.RMSNorm(dim, eps=eps)
            self.post_feedforward_layernorm_2 = nn.RMSNorm(dim, eps=eps)
        self.has_per_layer_input = args.hidden_size_per_layer_input > 0
        if self.has_per_layer_input:
            ple = args.hidden_size_per_layer_input
            self.per_layer_input_gate = nn.Linear(dim, ple, bias=False)
            self.per_layer_projection = nn.Linear(ple, dim, bias=False)
            self.post_per_layer_input_norm = nn.RMSNorm(dim, eps=eps)

    def __call__(self, x: mx.array, mask: Mask, cache: AttentionCache | None, offset: int | mx.array,
                 shared: KeysValues | None, per_layer_input: mx.array | None) -> tuple[mx.array, KeysValues]:
        attended, keys_values = self.self_attn(self.input_layernorm(x), mask, cache, offset, shared)
        h = x + self.post_attention_layernorm(attended)
        m = self.mlp(self.pre_feedforward_layernorm(h))
        if self.has_moe:
            experts = self.moe(self.pre_feedforward_layernorm_2(h), h)  # routed on the residual h
            m = self.post_feedforward_layernorm_1(m) + self.post_feedforward_layernorm_2(experts)
        h = h + self.post_feedforward_layernorm(m)
        if self.has_per_layer_input:
            assert per_layer_input is not None
            gate = ops.activation(self.per_layer_input_gate(h), "gelu_tanh")
            h = h + self.post_per_layer_input_norm(self.per_layer_projection(gate * per_layer_input))
        return h * self.layer_scalar, keys_values
