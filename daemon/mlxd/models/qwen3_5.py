"""Qwen3.5 (dense): a hybrid of Gated DeltaNet layers (linear attention with a recurrent state, models/gated_delta.py)
and gated full-attention layers, `layer_types` saying which (published: three linear, then one full).

Differences from Qwen3 that matter (fixtures/parity/HYBRID_NOTES.md §1):
- RMSNorms scale by (1 + w) (zero-centred weights), except the DeltaNet output's gated norm; sanitize folds the 1
  in, as mlx-lm's conversions store them, so converted folders load too.
- Full attention: q_proj gives per head [query | output gate]; q/k RMSNorm before a partial rotary embedding (the
  first `partial_rotary_factor` of each head's dims); the output is multiplied by sigmoid(gate) before o_proj.
- The recurrent layers keep a conv state and a recurrent state per sequence (models/recurrent_cache.py) instead of
  keys and values.

Published checkpoints are the vision-language model: the text model is `model.language_model.*` beside a vision
tower `model.visual.*` and a multi-token-prediction head `mtp.*`; only the text model is served.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import llama, ops, sharding
from mlxd.models.base import AttentionCache, DeltaHeads, Mask, attention_mask, drop_unused_weights
from mlxd.models.cache import KVCache, LayerCache
from mlxd.models.gated_delta import causal_conv, gated_delta, gated_delta_steps, l2_normalize
from mlxd.models.projections import GATE_UP, QKV, Projections, add_linears, join_fused_weights
from mlxd.models.recurrent_cache import RecurrentCache, RecurrentState
from mlxd.models.rope import make_rope

log = logging.getLogger(__name__)

# A DeltaNet layer's four input projections read the same input: one matmul when fused.
LINEAR_IN = Projections("in_proj", ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a"))
# Norms that multiply by (1 + w) in the checkpoint (the DeltaNet output's gated norm multiplies by w).
_ZERO_CENTRED = ("input_layernorm.weight", "post_attention_layernorm.weight", "q_norm.weight", "k_norm.weight")


@dataclass
class ModelArgs(llama.ModelArgs):
    head_dim: int = 256
    partial_rotary_factor: float | None = None  # published configs also put it at the top of text_config
    full_attention_interval: int = 4            # only when layer_types is absent (transformers' rule)
    linear_conv_kernel_dim: int = 4
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32
    # Which key head a DeltaNet value head reads: "grouped" (the checkpoint's: value head j reads key head
    # j // (Hv / Hk)) or "tiled" (llama.cpp's GGUF files reorder the value heads so that j reads j mod Hk).
    linear_value_head_order: str = "grouped"

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """The text model's config: a published (vision-language) config's `text_config`, else `d` itself."""
        text = d.get("text_config")
        if isinstance(text, dict):
            d = {**{k: d[k] for k in ("tie_word_embeddings",) if k in d}, **text}
        return super().from_dict(cls.defaults(d))

    @staticmethod
    def defaults(d: dict[str, Any]) -> dict[str, Any]:
        """Keys the architecture's configs may leave out, filled as transformers fills them."""
        return d

    def __post_init__(self) -> None:
        if not self.layer_types:
            self.layer_types = ["full_attention" if (i + 1) % self.full_attention_interval == 0
                                else "linear_attention" for i in range(self.num_hidden_layers)]
        super().__post_init__()

    def linear(self, layer: int) -> bool:
        return self.layer_types[layer] == "linear_attention"

    @property
    def rotary_dims(self) -> int:
        factor = self.rope_parameters.get("partial_rotary_factor", self.partial_rotary_factor)
        return int(self.head_dim * (0.25 if factor is None else factor))


class Attention(nn.Module):
    """Full attention with a sigmoid output gate per head and channel."""

    def __init__(self, args: ModelArgs, fused: bool = False):
        super().__init__()
        dim, self.head_dim = args.hidden_size, args.head_dim
        self.n_heads, self.n_kv_heads = args.num_attention_heads, args.num_key_value_heads
        self.scale = self.head_dim**-0.5
        q_dim, kv_dim = 2 * self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.fused, self._split = fused, [q_dim, q_dim + kv_dim]
        add_linears(self, QKV, dim, (q_dim, kv_dim, kv_dim), args.attention_bias, fused)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, dim, bias=args.attention_bias)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=args.rms_norm_eps)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=args.rms_norm_eps)
        # Text positions are the same on M-RoPE's three axes, so mrope_section changes nothing: plain rope.
        self.rope = make_rope(args.rotary_dims, args.rope_parameters)

    def __call__(self, x: mx.array, mask: Mask, cache: AttentionCache | None = None) -> mx.array:
        B, L, _ = x.shape
        if self.fused:
            q, k, v = mx.split(self.qkv_proj(x), self._split, axis=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, gate = mx.split(q.reshape(B, L, self.n_heads, 2 * self.head_dim), 2, axis=-1)  # per head [q | gate]
        q = self.q_norm(q).transpose(0, 2, 1, 3)
        k = self.k_norm(k.reshape(B, L, self.n_kv_heads, -1)).transpose(0, 2, 1, 3)
        v = v.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        offset = 0 if cache is None else cache.offset
        q, k = self.rope(q, offset), self.rope(k, offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        out = ops.attention(q, k, v, self.scale, mask).transpose(0, 2, 1, 3).reshape(B, L, -1)
        return self.o_proj(out * mx.sigmoid(gate.reshape(B, L, -1)))


class GatedDeltaNet(nn.Module):
    """Linear attention with the gated delta rule: in-projections, a causal conv on [q | k | v], the recurrence
    per value head (value head j reads key head j // (Hv / Hk)), a gated RMSNorm and out_proj."""

    def __init__(self, args: ModelArgs, fused: bool = False):
        super().__init__()
        self.hk, self.hv = args.linear_num_key_heads, args.linear_num_value_heads
        self.dk, self.dv = args.linear_key_head_dim, args.linear_value_head_dim
        if args.linear_value_head_order not in ("grouped", "tiled"):
            raise ValueError(f"linear_value_head_order {args.linear_value_head_order!r}: grouped or tiled")
        self.tiled = args.linear_value_head_order == "tiled"
        conv_dim = 2 * self.hk * self.dk + self.hv * self.dv
        widths = (conv_dim, self.hv * self.dv, self.hv, self.hv)
        self.fused, self._split = fused, [conv_dim, conv_dim + widths[1], conv_dim + widths[1] + self.hv]
        add_linears(self, LINEAR_IN, args.hidden_size, widths, False, fused)
        # weight [C, K, 1] (MLX's layout); checkpoints store [C, 1, K] and sanitize moves the axes.
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, args.linear_conv_kernel_dim, groups=conv_dim, bias=False)
        self.A_log = mx.zeros((self.hv,))
        self.dt_bias = mx.ones((self.hv,))
        self.norm = nn.RMSNorm(self.dv, eps=args.rms_norm_eps)
        self.out_proj = nn.Linear(self.hv * self.dv, args.hidden_size, bias=False)

    def shard(self, group: mx.distributed.Group) -> None:
        """This rank's key and value heads (value head j reads key head j // (Hv / Hk), so a rank's value heads
        read its own key heads): their slices of [q | k | v], of the conv over them and of the per-head decay;
        conv and recurrent states then hold only these heads."""
        if self.tiled:
            raise ValueError("tensor parallelism needs the grouped value-head order (a GGUF file's is tiled)")
        key_width, value_width = self.hk * self.dk, self.hv * self.dv
        qkv = (key_width, key_width, value_width)
        sharding.shard_columns(self.in_proj_qkv, group, qkv)
        for name in ("in_proj_z", "in_proj_b", "in_proj_a"):
            sharding.shard_columns(self[name], group)
        sharding.shard_channels(self.conv1d, ("weight", "bias"), group, qkv)
        sharding.shard_channels(self, ("A_log", "dt_bias"), group)
        sharding.shard_rows(self.out_proj, group)
        self.hk = sharding.per_rank(self.hk, group, "key heads")
        self.hv = sharding.per_rank(self.hv, group, "value heads")

    def _per_value_head(self, x: mx.array) -> mx.array:
        """Key-head tensor [B, L, Hk, D] -> [B, L, Hv, D], the key head each value head reads."""
        per_key = self.hv // self.hk
        return mx.tile(x, (1, 1, per_key, 1)) if self.tiled else mx.repeat(x, per_key, axis=2)

    def __call__(self, x: mx.array, cache: RecurrentState | None = None) -> mx.array:
        B, L, _ = x.shape
        if self.fused:
            qkv, z, b, a = mx.split(self.in_proj(x), self._split, axis=-1)
        else:
            qkv, z, b, a = self.in_proj_qkv(x), self.in_proj_z(x), self.in_proj_b(x), self.in_proj_a(x)
        # A verify step keeps the states after each of its tokens, for the cache to roll back to the accepted ones.
        stepwise = cache is not None and cache.stepwise(L)
        if L == 1 and cache is not None and cache.conv_state is not None and cache.recurrent_state is not None:
            fused = ops.gated_delta_decode(qkv, a, b, self.conv1d.weight[:, :, 0], cache.conv_state, self.A_log,
                                           self.dt_bias, cache.recurrent_state, self.heads)
            if fused is not None:
                out, conv_state, state = fused
                cache.advance(conv_state, state, L)
                return self._gated_output(out, z)
        mixed, conv_state = causal_conv(qkv, self.conv1d.weight[:, :, 0], None if cache is None else cache.conv_state,
                                        stepwise=stepwise)
        key_width = self.hk * self.dk
        q, k, v = mx.split(mixed, [key_width, 2 * key_width], axis=-1)
        q, k = q.reshape(B, L, self.hk, self.dk), k.reshape(B, L, self.hk, self.dk)
        if self.hv != self.hk:
            q, k = (self._per_value_head(x) for x in (q, k))
        q = l2_normalize(q.astype(mx.float32)) * self.dk**-0.5
        k = l2_normalize(k.astype(mx.float32))
        beta = mx.sigmoid(b.astype(mx.float32))
        # Log decay per token and head, <= 0: -exp(A_log) * softplus(a + dt_bias).
        g = -mx.exp(self.A_log.astype(mx.float32)) * mx.logaddexp(a.astype(mx.float32) + self.dt_bias, 0.0)
        v, held = v.reshape(B, L, self.hv, self.dv), None if cache is None else cache.recurrent_state
        if cache is not None and stepwise:
            out, states = gated_delta_steps(q, k, v, g, beta, held)
            cache.advance_steps(conv_state, states)
        else:
            out, state = gated_delta(q, k, v, g, beta, held)
            if cache is not None:
                cache.advance(conv_state, state, L)
        return self._gated_output(out, z)

    def _gated_output(self, out: mx.array, z: mx.array) -> mx.array:
        """out_proj of the normalized outputs [B, L, hv, dv] gated by silu(z) (one fused kernel)."""
        B, L = out.shape[:2]
        gated = ops.gated_activation(z.reshape(B, L, self.hv, self.dv), self.norm(out), "silu", L)
        return self.out_proj(gated.reshape(B, L, -1))

    @property
    def heads(self) -> DeltaHeads:
        return DeltaHeads(self.hk, self.hv, self.dk, self.dv, self.tiled)


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, layer: int, fused: frozenset[str], mlp: nn.Module):
        super().__init__()
        path = f"model.layers.{layer}"
        self.is_linear = args.linear(layer)
        if self.is_linear:
            self.linear_attn = GatedDeltaNet(args, f"{path}.linear_attn" in fused)
        else:
            self.self_attn = Attention(args, f"{path}.self_attn" in fused)
        self.mlp = mlp
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, mask: Mask, cache: AttentionCache | None = None) -> mx.array:
        normed = self.input_layernorm(x)
        if self.is_linear:
            h = x + self.linear_attn(normed, cast(RecurrentState | None, cache))
        else:
            h = x + self.self_attn(normed, mask, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class Model(nn.Module):
    def __init__(self, args: ModelArgs, fused: frozenset[str] = frozenset()):
        """`fused`: the groups of fusable_projections() to build as one matmul (the loader decides which)."""
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.fused = fused
        n = args.num_hidden_layers
        layers: list[nn.Module] = [DecoderLayer(args, i, fused, self.mlp(args, i, fused)) for i in range(n)]
        self.model = llama.LlamaModel(args, layers)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self._first_full = next((i for i in range(n) if not args.linear(i)), None)

    def mlp(self, args: ModelArgs, layer: int, fused: frozenset[str]) -> nn.Module:
        """Layer `layer`'s MLP; the MoE variant overrides it."""
        return llama.MLP(args, f"model.layers.{layer}.mlp" in fused)

    @property
    def layers(self) -> list[nn.Module]:
        return self.model.layers

    def __call__(self, inputs: mx.array, cache: Sequence[AttentionCache] | None = None, *,
                 input_embeddings: mx.array | None = None) -> mx.array:
        h = self.model.embed_tokens(inputs) if input_embeddings is None else input_embeddings
        caches: Sequence[AttentionCache | None] = cache if cache is not None else [None] * len(self.layers)
        # One causal mask for every full-attention layer, from the first one's cache (no windows here).
        mask = None if self._first_full is None else attention_mask(inputs.shape[1], caches[self._first_full])
        for layer, c in zip(self.layers, caches):
            h = layer(h, mask, c)
        h = self.model.norm(h)
        if self.args.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(h)
        return self.lm_head(h)

    def shard(self, group: mx.distributed.Group) -> None:
        for layer in self.layers:
            if layer.is_linear:
                layer.linear_attn.shard(group)
            else:
                sharding.shard_attention(layer.self_attn, group)
            sharding.shard_feed_forward(layer.mlp, group)

    def make_cache(self) -> list[LayerCache]:
        return [RecurrentCache() if self.args.linear(i) else KVCache() for i in range(self.args.num_hidden_layers)]

    def fusable_projections(self) -> dict[str, Projections]:
        groups = {}
        for i in range(self.args.num_hidden_layers):
            path = f"model.layers.{i}"
            if self.args.linear(i):
                groups[f"{path}.linear_attn"] = LINEAR_IN
            else:
                groups[f"{path}.self_attn"] = QKV
            groups.update(self.mlp_projections(i))
        return groups

    def mlp_projections(self, layer: int) -> dict[str, Projections]:
        return {f"model.layers.{layer}.mlp": GATE_UP}

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        weights = drop_unused_weights(text_model_weights(weights), self.args.tie_word_embeddings)
        weights = self.sanitize_mlp(from_checkpoint_layout(weights))
        return join_fused_weights(weights, self.fusable_projections(), self.fused)

    def sanitize_mlp(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """The MLP weights under this model's names; the MoE variant stacks its experts here."""
        return weights


def text_model_weights(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """The text model's weights as `model.*` and `lm_head.*`, from a published vision-language checkpoint
    (`model.language_model.*`), an mlx-lm conversion (`language_model.model.*`) or a text-only one."""
    out, skipped = {}, []
    for name, value in weights.items():
        if name.startswith(("model.visual.", "visual.", "mtp.")):
            skipped.append(name)
            continue
        for prefix, ours in (("model.language_model.", "model."), ("language_model.", "")):
            if name.startswith(prefix):
                name = ours + name[len(prefix):]
                break
        out[name] = value
    if skipped:
        # The MTP head predicts the token after next from the last hidden state: a natural draft model for
        # speculative decoding, once the engine has one.
        log.info("serving the text model only: skipping %d vision-tower and multi-token-prediction tensors",
                 len(skipped))
    return out


def from_checkpoint_layout(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Weights in a Hugging Face checkpoint's layout (conv weights [C, 1, K]) moved to ours: conv weights
    [C, K, 1], and (1 + w) folded into the zero-centred norms. Weights in our layout (sanitized once already, or
    converted by mlx-lm, which folds the same way) are returned as they are."""
    hf_layout = any(name.endswith("conv1d.weight") and value.shape[-1] != 1 for name, value in weights.items())
    if not hf_layout:
        return weights
    out = dict(weights)
    for name, value in weights.items():
        if name.endswith("conv1d.weight"):
            out[name] = value.moveaxis(2, 1)
        elif name.endswith(_ZERO_CENTRED) or name == "model.norm.weight":
            out[name] = value + 1.0
    return out

