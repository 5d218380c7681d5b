"""Gemma 4 attention: scores not scaled down (scale 1: q and k are RMS-normed per head instead), values RMS-normed
without a weight, a larger head on full-attention layers with proportional rope, keys that are the values on K=V
layers, and KV-shared layers that project only queries and attend to an earlier layer's keys and values."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import ops
from mlxd.models.base import AttentionCache, Mask
from mlxd.models.gemma4.config import TextArgs
from mlxd.models.projections import QKV, add_linears
from mlxd.models.rope import RoPE, make_rope

# Keys and values [B, kv_heads, T, head_dim] a layer attended to, for the KV-shared layers that read them.
KeysValues = tuple[mx.array, mx.array]


def rms_norm_no_weight(x: mx.array, eps: float) -> mx.array:
    """Gemma 4's RMSNorm built `with_scale=False` (the values' norm, the router's)."""
    return mx.fast.rms_norm(x, None, eps)


def make_gemma4_rope(dims: int, params: dict[str, Any]) -> RoPE:
    """Rope over the whole head; "proportional" (the full-attention layers') rotates only the first
    int(partial_rotary_factor * dims // 2) pairs, at the frequencies the whole head would give them
    (theta^(-2i/dims)); the other pairs keep an infinite period, i.e. are not rotated."""
    if params.get("rope_type") != "proportional":
        return make_rope(dims, params)
    rotated = int(float(params.get("partial_rotary_factor", 1.0)) * dims // 2)
    theta = float(params.get("rope_theta", 10_000.0))
    periods = theta ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)
    return RoPE(dims, mx.where(mx.arange(dims // 2) < rotated, periods, mx.inf))


class Attention(nn.Module):
    def __init__(self, args: TextArgs, layer: int, fused: bool = False):
        super().__init__()
        dim, head_dim = args.hidden_size, args.head_size(layer)
        self.n_heads, self.n_kv_heads = args.num_attention_heads, args.kv_heads(layer)
        self.eps = args.rms_norm_eps
        self.shares_kv = args.shares_kv(layer)
        self.keys_are_values = args.keys_equal_values(layer)
        q_dim, kv_dim = self.n_heads * head_dim, self.n_kv_heads * head_dim
        bias = args.attention_bias
        # qkv_proj where the loader fused q, k and v (layers with all three only), else the checkpoint's layers.
        self.fused, self._split = fused, [q_dim, q_dim + kv_dim]
        if fused:
            add_linears(self, QKV, dim, (q_dim, kv_dim, kv_dim), bias, fused=True)
        else:
            self.q_proj = nn.Linear(dim, q_dim, bias=bias)
            if not self.shares_kv:
                self.k_proj = nn.Linear(dim, kv_dim, bias=bias)
                if not self.keys_are_values:
                    self.v_proj = nn.Linear(dim, kv_dim, bias=bias)
        self.o_proj = nn.Linear(q_dim, dim, bias=bias)
        self.q_norm = nn.RMSNorm(head_dim, eps=self.eps)
        if not self.shares_kv:
            self.k_norm = nn.RMSNorm(head_dim, eps=self.eps)
        self.rope = make_gemma4_rope(head_dim, args.rope_parameters[args.layer_types[layer]])

    def __call__(self, x: mx.array, mask: Mask, cache: AttentionCache | None, offset: int | mx.array,
                 shared: KeysValues | None = None) -> tuple[mx.array, KeysValues]:
        """The attention output, and the keys and values attended to (all the cache holds, new ones included).
        `offset`: the position of x's first token; `shared`: a KV-shared layer's keys and values."""
        B, L, _ = x.shape
        q, k, v = self._project(x)
        q = self.rope(self.q_norm(q.reshape(B, L, self.n_heads, -1)).transpose(0, 2, 1, 3), offset)
        if shared is not None:
            k, v = shared
        else:
            assert k is not None and v is not None
            k = k.reshape(B, L, self.n_kv_heads, -1)
            v = rms_norm_no_weight(v.reshape(B, L, self.n_kv_heads, -1), self.eps).transpose(0, 2, 1, 3)
            k = self.rope(self.k_norm(k).transpose(0, 2, 1, 3), offset)
            if cache is not None:
                k, v = cache.update_and_fetch(k, v)
        out = ops.attention(q, k, v, 1.0, mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1)), (k, v)

    def _project(self, x: mx.array) -> tuple[mx.array, mx.array | None, mx.array | None]:
        """Queries, and keys and values before any norm (None on a KV-shared layer; the keys on K=V ones)."""
        if self.fused:
            q, k, v = mx.split(self.qkv_proj(x), self._split, axis=-1)
            return q, k, v
        if self.shares_kv:
            return self.q_proj(x), None, None
        k = self.k_proj(x)
        return self.q_proj(x), k, k if self.keys_are_values else self.v_proj(x)
