"""Gemma 3 text decoder: interleaved sliding-window and full-attention layers, each with its own rope."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import ops, sharding
from mlxd.models.base import AttentionCache, BaseModelArgs, Mask, MaskModifier, drop_unused_weights, layer_masks
from mlxd.models.cache import LayerCache, make_layer_caches
from mlxd.models.projections import (
    QKV,
    GatedMLP,
    Projections,
    add_linears,
    decoder_fusion,
    decoder_projections,
    join_fused_weights,
)
from mlxd.models.rope import make_rope


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    vocab_size: int
    head_dim: int = 256
    num_key_value_heads: int = 0  # 0 (or null in config.json): as many as the attention heads
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int | None = None
    query_pre_attn_scalar: float = 256
    sliding_window: int = 4096
    layer_types: list[str] = field(default_factory=list)  # empty: Gemma 3's fixed pattern
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
        if not self.layer_types:
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
    def __init__(self, args: ModelArgs, layer_type: str, fused: bool = False):
        super().__init__()
        dim, head_dim = args.hidden_size, args.head_dim
        self.n_heads, self.n_kv_heads = args.num_attention_heads, args.num_key_value_heads
        self.scale = args.query_pre_attn_scalar**-0.5
        self.softcap = args.attn_logit_softcapping
        q_dim, kv_dim = self.n_heads * head_dim, self.n_kv_heads * head_dim
        # qkv_proj where the loader fused q, k and v into one matmul, else q_proj, k_proj and v_proj.
        self.fused, self._split = fused, [q_dim, q_dim + kv_dim]
        add_linears(self, QKV, dim, (q_dim, kv_dim, kv_dim), args.attention_bias, fused)
        self.o_proj = nn.Linear(q_dim, dim, bias=args.attention_bias)
        self.q_norm = RMSNorm(head_dim, args.rms_norm_eps)
        self.k_norm = RMSNorm(head_dim, args.rms_norm_eps)
        self.rope = make_rope(head_dim, args.rope_parameters[layer_type])

    def __call__(self, x: mx.array, mask: Mask, cache: AttentionCache | None = None) -> mx.array:
        B, L, _ = x.shape
        if self.fused:
            q, k, v = mx.split(self.qkv_proj(x), self._split, axis=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = self.q_norm(q.reshape(B, L, self.n_heads, -1)).transpose(0, 2, 1, 3)
        k = self.k_norm(k.reshape(B, L, self.n_kv_heads, -1)).transpose(0, 2, 1, 3)
        v = v.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        offset = 0 if cache is None else cache.offset
        q, k = self.rope(q, offset), self.rope(k, offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        out = ops.attention(q, k, v, self.scale, mask, softcap=self.softcap)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MLP(GatedMLP):
    def __init__(self, args: ModelArgs, fused: bool = False):
        # gelu_pytorch_tanh is the tanh approximation of GELU.
        super().__init__(args.hidden_size, args.intermediate_size, "gelu_tanh", fused=fused)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer_type: str, fused_attention: bool = False, fused_mlp: bool = False):
        super().__init__()
        eps = args.rms_norm_eps
        self.self_attn = Attention(args, layer_type, fused_attention)
        self.mlp = MLP(args, fused_mlp)
        self.input_layernorm = RMSNorm(args.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(args.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(args.hidden_size, eps)

    def __call__(self, x: mx.array, mask: Mask, cache: AttentionCache | None = None) -> mx.array:
        h = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), mask, cache))
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class Gemma3TextModel(nn.Module):
    def __init__(self, args: ModelArgs, fused: list[tuple[bool, bool]]):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args, t, *f) for t, f in zip(args.layer_types, fused)]
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)


class Model(nn.Module):
    def __init__(self, args: ModelArgs, fused: frozenset[str] = frozenset()):
        """`fused`: the groups of fusable_projections() to build as one matmul (the loader decides which)."""
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.fused = fused
        self._windows = [args.window(i) for i in range(args.num_hidden_layers)]
        self.model = Gemma3TextModel(args, decoder_fusion(fused, "model.layers", args.num_hidden_layers))
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    @property
    def layers(self) -> list[TransformerBlock]:
        return self.model.layers

    def embed(self, inputs: mx.array) -> mx.array:
        """The decoder's input for token ids: embeddings times sqrt(hidden_size), as transformers'
        Gemma3TextScaledWordEmbedding; `input_embeddings` stand for exactly this."""
        h = self.model.embed_tokens(inputs)
        # HF rounds the scale to the embedding dtype before multiplying.
        return h * mx.array(math.sqrt(self.args.hidden_size), dtype=h.dtype)

    def __call__(self, inputs: mx.array, cache: Sequence[AttentionCache] | None = None, *,
                 input_embeddings: mx.array | None = None,
                 mask_modifier: MaskModifier | None = None) -> mx.array:
        """`mask_modifier` changes each layer's attention mask: the VLM lets one image's tokens see each other."""
        h = self.embed(inputs) if input_embeddings is None else input_embeddings
        caches: Sequence[AttentionCache | None] = cache if cache is not None else [None] * len(self.layers)
        masks = layer_masks(inputs.shape[1], caches, self._windows, mask_modifier)
        for layer, c, mask in zip(self.layers, caches, masks):
            h = layer(h, mask, c)
        h = self.model.norm(h)
        logits = self.model.embed_tokens.as_linear(h) if self.args.tie_word_embeddings else self.lm_head(h)
        cap = self.args.final_logit_softcapping
        return logits if cap is None else mx.tanh(logits / cap) * cap

    def fusable_projections(self) -> dict[str, Projections]:
        return decoder_projections("model.layers", self.args.num_hidden_layers)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        weights = drop_unused_weights(weights, self.args.tie_word_embeddings)
        return join_fused_weights(weights, self.fusable_projections(), self.fused)

    def make_cache(self) -> list[LayerCache]:
        return make_layer_caches(self._windows)

    def shard(self, group: mx.distributed.Group) -> None:
        sharding.shard_decoder_layers(self.layers, group)
