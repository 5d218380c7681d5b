"""Llama (1, 2, 3.x) and the decoder layout mistral, qwen2, qwen3 and the MoE models (qwen3_moe, mixtral,
gpt_oss) share with it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import ops, sharding
from mlxd.models.base import AttentionCache, BaseModelArgs, Mask, drop_unused_weights, layer_masks
from mlxd.models.cache import LayerCache, make_layer_caches
from mlxd.models.projections import (
    QKV,
    GatedMLP,
    Projections,
    add_linears,
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
    rms_norm_eps: float = 1e-6
    num_key_value_heads: int = 0  # 0 (or null in config.json): as many as the attention heads
    head_dim: int = 0  # 0 (or null): hidden_size // num_attention_heads
    max_position_embeddings: int | None = None
    rope_parameters: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    layer_types: list[str] = field(default_factory=list)  # empty: every layer as sliding_window says

    def __post_init__(self) -> None:
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if not self.layer_types:
            kind = "sliding_attention" if self.sliding_window else "full_attention"
            self.layer_types = [kind] * self.num_hidden_layers

    # Projection layout; subclasses for other architectures override these instead of the layers.
    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.attention_bias

    @property
    def qk_norm(self) -> bool:
        return False

    @property
    def attention_sinks(self) -> bool:
        """Whether each head has a learned logit that joins its softmax (gpt-oss; ops.attention's `sinks`)."""
        return False

    def window(self, layer: int) -> int | None:
        """The sliding window of layer `layer`, None for full attention."""
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, fused: bool = False):
        super().__init__()
        dim, head_dim = args.hidden_size, args.head_dim
        self.n_heads, self.n_kv_heads = args.num_attention_heads, args.num_key_value_heads
        self.scale = head_dim**-0.5
        q_dim, kv_dim = self.n_heads * head_dim, self.n_kv_heads * head_dim
        # qkv_proj where the loader fused q, k and v into one matmul, else q_proj, k_proj and v_proj.
        self.fused, self._split = fused, [q_dim, q_dim + kv_dim]
        add_linears(self, QKV, dim, (q_dim, kv_dim, kv_dim), args.qkv_bias, fused)
        self.o_proj = nn.Linear(q_dim, dim, bias=args.o_bias)
        self.use_qk_norm = args.qk_norm
        if args.qk_norm:
            self.q_norm = nn.RMSNorm(head_dim, eps=args.rms_norm_eps)
            self.k_norm = nn.RMSNorm(head_dim, eps=args.rms_norm_eps)
        self.use_sinks = args.attention_sinks
        if args.attention_sinks:
            self.sinks = mx.zeros((self.n_heads,))
        self.rope = make_rope(head_dim, args.rope_parameters)

    def __call__(self, x: mx.array, mask: Mask, cache: AttentionCache | None = None) -> mx.array:
        B, L, _ = x.shape
        if self.fused:
            q, k, v = mx.split(self.qkv_proj(x), self._split, axis=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.reshape(B, L, self.n_heads, -1)
        k = k.reshape(B, L, self.n_kv_heads, -1)
        v = v.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        if self.use_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)
        offset = 0 if cache is None else cache.offset
        q, k = self.rope(q, offset), self.rope(k, offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        out = ops.attention(q, k, v, self.scale, mask, sinks=self.sinks if self.use_sinks else None)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MLP(GatedMLP):
    def __init__(self, args: ModelArgs, fused: bool = False):
        super().__init__(args.hidden_size, args.intermediate_size, "silu", args.mlp_bias, fused)


class TransformerBlock(nn.Module):
    """A decoder layer. Its dense MLP half (the norm, the MLP, the residual) goes through ops.decode_block where the
    class sets COMPILED_DECODE: on the CUDA backend a decode step's half is then traced once per batch size and
    replayed, as SparseMoe's blocks are (models/moe.py). Measured on an H100 (session 40, `batch_inprocess --variant
    NAME:mlxd.models.llama.TransformerBlock.COMPILED_DECODE=True`, interleaved rounds): random 1B 1.002x at 1 stream,
    1.036x at 16 (3 rounds of 4 faster); 8B 0.993x / 1.012x (every 16-stream round faster). Off until the first step
    at a new batch size is measured with it (a retrace, and on CUDA perhaps kernels compiled: `bench first_requests
    --batches`); the CPU gives the same greedy tokens either way (float32 and bfloat16)."""

    COMPILED_DECODE = False

    def __init__(self, args: ModelArgs, fused_attention: bool = False, fused_mlp: bool = False,
                 mlp: nn.Module | None = None):
        """`mlp`: the layer's MLP when it is not the dense one (a MoE layer's, models/moe.py)."""
        super().__init__()
        self.self_attn = Attention(args, fused_attention)
        self.mlp = MLP(args, fused_mlp) if mlp is None else mlp
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, mask: Mask, cache: AttentionCache | None = None) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), mask, cache)
        if self.COMPILED_DECODE and isinstance(self.mlp, GatedMLP):  # a MoE layer's MLP replays its own block
            return ops.decode_block(self, self.mlp_half, h)
        return self.mlp_half(h)

    def mlp_half(self, h: mx.array) -> mx.array:
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    def __init__(self, args: ModelArgs, layers: list[nn.Module]):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = layers
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)


class Model(nn.Module):
    def __init__(self, args: ModelArgs, fused: frozenset[str] = frozenset()):
        """`fused`: the groups of fusable_projections() to build as one matmul (the loader decides which)."""
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.fused = fused
        self._windows = [args.window(i) for i in range(args.num_hidden_layers)]
        self.model = LlamaModel(args, [self.block(args, i, fused) for i in range(args.num_hidden_layers)])
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def block(self, args: ModelArgs, layer: int, fused: frozenset[str]) -> nn.Module:
        """Decoder layer `layer`, built with its groups in `fused` fused; MoE architectures override it."""
        return TransformerBlock(args, f"model.layers.{layer}.self_attn" in fused, f"model.layers.{layer}.mlp" in fused)

    @property
    def layers(self) -> list[nn.Module]:
        return self.model.layers

    def __call__(self, inputs: mx.array, cache: Sequence[AttentionCache] | None = None, *,
                 input_embeddings: mx.array | None = None) -> mx.array:
        h = self.model.embed_tokens(inputs) if input_embeddings is None else input_embeddings
        caches: Sequence[AttentionCache | None] = cache if cache is not None else [None] * len(self.layers)
        masks = layer_masks(inputs.shape[1], caches, self._windows)
        for layer, c, mask in zip(self.layers, caches, masks):
            h = layer(h, mask, c)
        h = self.model.norm(h)
        if self.args.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(h)
        return self.lm_head(h)

    def fusable_projections(self) -> dict[str, Projections]:
        return decoder_projections("model.layers", self.args.num_hidden_layers)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        weights = drop_unused_weights(weights, self.args.tie_word_embeddings)
        return join_fused_weights(weights, self.fusable_projections(), self.fused)

    def make_cache(self) -> list[LayerCache]:
        return make_layer_caches(self._windows)

    def shard(self, group: mx.distributed.Group) -> None:
        sharding.shard_decoder_layers(self.layers, group)
