"""Gemma 3 text decoder: interleaved sliding-window and full-attention layers, each with its own rope."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlxd.models.base import (
    GATE_UP,
    QKV,
    BaseModelArgs,
    drop_unused_weights,
    fuse_linears,
    gated_activation,
    layer_masks,
    make_rope,
    project,
    scaled_dot_product_attention,
)
from mlxd.models.cache import KVCache, RotatingKVCache, make_layer_caches


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    vocab_size: int
    head_dim: int = 256
    num_key_value_heads: int | None = None
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int | None = None
    query_pre_attn_scalar: float = 256
    sliding_window: int = 4096
    layer_types: list[str] | None = None
    # Keyed by layer type; loading.config converts the transformers 4 layout into this one.
    rope_parameters: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        }
    )
    attention_bias: bool = False
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    hidden_activation: str = "gelu_pytorch_tanh"
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        if self.layer_types is None:
            # Gemma 3's fixed pattern: five sliding layers, then one full.
            self.layer_types = [
                "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(self.num_hidden_layers)
            ]

    def window(self, layer: int) -> int | None:
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None


class RMSNorm(nn.Module):
    """Gemma's RMSNorm scales by (1 + weight): checkpoints store the offset from one."""

    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.zeros((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, 1.0 + self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer_type: str):
        super().__init__()
        dim, head_dim = args.hidden_size, args.head_dim
        self.n_heads, self.n_kv_heads = args.num_attention_heads, args.num_key_value_heads
        self.scale = args.query_pre_attn_scalar**-0.5
        self.softcap = args.attn_logit_softcapping
        self.q_proj = nn.Linear(dim, self.n_heads * head_dim, bias=args.attention_bias)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=args.attention_bias)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=args.attention_bias)
        self.o_proj = nn.Linear(self.n_heads * head_dim, dim, bias=args.attention_bias)
        self.q_norm = RMSNorm(head_dim, args.rms_norm_eps)
        self.k_norm = RMSNorm(head_dim, args.rms_norm_eps)
        self.rope = make_rope(head_dim, args.rope_parameters[layer_type])
        # Where q ends and k ends in a fused projection's output (ints: a list would become a module item).
        self._q_end, self._k_end = self.n_heads * head_dim, (self.n_heads + self.n_kv_heads) * head_dim

    def fuse_projections(self) -> bool:
        return fuse_linears(self, *QKV)

    def __call__(self, x: mx.array, mask, cache=None) -> mx.array:
        B, L, _ = x.shape
        q, k, v = project(self, *QKV, x, [self._q_end, self._k_end])
        q = self.q_norm(q.reshape(B, L, self.n_heads, -1)).transpose(0, 2, 1, 3)
        k = self.k_norm(k.reshape(B, L, self.n_kv_heads, -1)).transpose(0, 2, 1, 3)
        v = v.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        offset = 0 if cache is None else cache.offset
        q, k = self.rope(q, offset), self.rope(k, offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        out = scaled_dot_product_attention(q, k, v, self.scale, mask, softcap=self.softcap)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def fuse_projections(self) -> bool:
        return fuse_linears(self, *GATE_UP)

    def __call__(self, x: mx.array) -> mx.array:
        gate, up = project(self, *GATE_UP, x, 2)
        # gelu_pytorch_tanh is the tanh approximation of GELU.
        return self.down_proj(gated_activation(gate, up, "gelu_tanh"))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer_type: str):
        super().__init__()
        eps = args.rms_norm_eps
        self.self_attn = Attention(args, layer_type)
        self.mlp = MLP(args)
        self.input_layernorm = RMSNorm(args.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(args.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(args.hidden_size, eps)

    def __call__(self, x: mx.array, mask, cache=None) -> mx.array:
        h = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), mask, cache))
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class Gemma3TextModel(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args, t) for t in args.layer_types]
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self._windows = [args.window(i) for i in range(args.num_hidden_layers)]
        self.model = Gemma3TextModel(args)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    @property
    def layers(self) -> list[TransformerBlock]:
        return self.model.layers

    def __call__(self, inputs: mx.array, cache: list | None = None) -> mx.array:
        h = self.model.embed_tokens(inputs)
        # HF rounds the scale to the embedding dtype before multiplying.
        h = h * mx.array(math.sqrt(self.args.hidden_size), dtype=h.dtype)
        cache = cache if cache is not None else [None] * len(self.layers)
        masks = layer_masks(inputs.shape[1], cache, self._windows)
        for layer, c, mask in zip(self.layers, cache, masks):
            h = layer(h, mask, c)
        h = self.model.norm(h)
        logits = self.model.embed_tokens.as_linear(h) if self.args.tie_word_embeddings else self.lm_head(h)
        cap = self.args.final_logit_softcapping
        return logits if cap is None else mx.tanh(logits / cap) * cap

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        return drop_unused_weights(weights, self.args.tie_word_embeddings)

    def make_cache(self) -> list[KVCache | RotatingKVCache]:
        return make_layer_caches(self._windows)
