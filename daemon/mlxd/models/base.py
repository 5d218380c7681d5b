"""Pieces every architecture shares: argument parsing, attention masks, attention, rotary embeddings."""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Protocol

import mlx.core as mx
import mlx.nn as nn

from mlxd.errors import ModelLoadError
from mlxd.models import cpu_kernels

Mask = mx.array | str | None


@dataclasses.dataclass
class BaseModelArgs:
    """Base for every architecture's ModelArgs: builds from a config dict, ignoring keys it does not know."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class MaskingCache(Protocol):
    """What mask creation needs from a KV cache (see mlxd.models.cache)."""

    def make_mask(self, length: int, window: int | None = None) -> Mask: ...


def create_attention_mask(length: int, offset: int, window: int | None = None, key_start: int = 0) -> Mask:
    """Mask for a block of `length` queries at absolute positions offset.. against keys at key_start..offset+length-1.

    A query at position p sees key k iff k <= p and, with a sliding window, p - k < window (HF semantics).
    Returns None when every key is visible and "causal" when MLX's built-in bottom-right causal mask is exact,
    so the common cases materialize no array.
    """
    n_keys = offset + length - key_start
    window_bites = window is not None and offset + length - 1 - key_start >= window
    if not window_bites:
        return None if length == 1 else "causal"
    q_pos = mx.arange(offset, offset + length)[:, None]
    k_pos = mx.arange(key_start, key_start + n_keys)[None, :]
    return (k_pos <= q_pos) & (k_pos > q_pos - window)


def attention_mask(length: int, cache: MaskingCache | None, window: int | None = None) -> Mask:
    """The mask for one forward pass of `length` tokens, from the cache's position (offset 0 without a cache)."""
    if cache is None:
        return create_attention_mask(length, 0, window)
    return cache.make_mask(length, window)


def layer_masks(length: int, caches: list, windows: list[int | None]) -> list[Mask]:
    """One mask per layer, built once per distinct window from the first cache of a layer with that window."""
    by_window: dict[int | None, Mask] = {}
    for window, cache in zip(windows, caches):
        if window not in by_window:
            by_window[window] = attention_mask(length, cache, window)
    return [by_window[w] for w in windows]


def fuse_linears(module: nn.Module, fused_name: str, names: tuple[str, ...]) -> bool:
    """Replace the linear layers `names` of `module` by one layer `fused_name` whose outputs are theirs side by
    side (weights concatenated along the output features), so one matmul serves them all: at small batch sizes
    one wide matmul runs faster than several narrow ones. Returns False, leaving them apart, when they cannot
    share a matmul (different layer types, quantization, dtypes, or bias)."""
    layers = [module[name] for name in names]
    first = layers[0]
    if type(first) not in (nn.Linear, nn.QuantizedLinear) or any(type(layer) is not type(first) for layer in layers):
        return False
    params = sorted(first.keys())
    if any(sorted(layer.keys()) != params for layer in layers):
        return False
    if any(layer[p].dtype != first[p].dtype or layer[p].shape[1:] != first[p].shape[1:]
           for layer in layers for p in params):
        return False
    if any(_quantization(layer) != _quantization(first) for layer in layers):
        return False
    fused = copy.copy(first)  # the same layer type and settings; its arrays are replaced below
    for p in params:
        fused[p] = mx.concatenate([layer[p] for layer in layers], axis=0)
    for name in names:
        del module[name]
    module[fused_name] = fused
    mx.eval(fused.parameters())
    return True


def project(module: nn.Module, fused_name: str, names: tuple[str, ...], x: mx.array,
            split_at: int | list[int]) -> list[mx.array]:
    """The outputs of the linear layers `names` of `module` for `x`: one matmul split at `split_at` (as
    mx.split takes it) once fuse_linears made `fused_name`, else one matmul each."""
    if fused_name in module:
        return mx.split(module[fused_name](x), split_at, axis=-1)
    return [module[name](x) for name in names]


def gated_activation(gate: mx.array, up: mx.array, kind: str) -> mx.array:
    """A gated MLP's activation(gate) * up, for "silu" (Llama, Mistral, Qwen) or "gelu_tanh" (Gemma 3)."""
    if cpu_kernels.activation_applies(gate, kind):
        return cpu_kernels.activation(gate, kind, up)
    return _ACTIVATIONS[kind](gate) * up


def activation(x: mx.array, kind: str) -> mx.array:
    """An MLP's activation: "silu", "gelu_tanh" (GELU's tanh approximation, gelu_pytorch_tanh) or "gelu"."""
    if cpu_kernels.activation_applies(x, kind):
        return cpu_kernels.activation(x, kind)
    return _ACTIVATIONS[kind](x)


_ACTIVATIONS = {"silu": nn.silu, "gelu_tanh": nn.gelu_approx, "gelu": nn.gelu}


# The fusable projections of an attention and of a gated MLP: (fused layer, the layers it replaces).
QKV = ("qkv_proj", ("q_proj", "k_proj", "v_proj"))
GATE_UP = ("gate_up_proj", ("gate_proj", "up_proj"))


def _quantization(layer: nn.Module) -> tuple:
    """What a quantized layer's codes mean (None for a float layer): layers that share a matmul must agree."""
    return getattr(layer, "bits", None), getattr(layer, "group_size", None), getattr(layer, "mode", None)


def fuse_projections(model: nn.Module) -> int:
    """Let every module that can (attention: q/k/v; MLP: gate/up) compute its input projections with one matmul.
    Done once after loading; returns how many modules fused."""
    fusable = [m for _, m in model.named_modules() if callable(getattr(m, "fuse_projections", None))]
    return sum(bool(m.fuse_projections()) for m in fusable)


def drop_unused_weights(weights: dict[str, mx.array], tie_word_embeddings: bool) -> dict[str, mx.array]:
    """Remove rotary buffers some checkpoints carry, and the lm_head copy of tied embeddings."""
    return {
        k: v
        for k, v in weights.items()
        if "rotary_emb.inv_freq" not in k and not (tie_word_embeddings and k.startswith("lm_head."))
    }


def scaled_dot_product_attention(
    queries: mx.array,
    keys: mx.array,
    values: mx.array,
    scale: float,
    mask: Mask,
    softcap: float | None = None,
) -> mx.array:
    """Attention over [B, heads, T, D] arrays; kv heads may be fewer than query heads (grouped-query)."""
    if cpu_kernels.attention_applies(queries, mask, softcap):
        return cpu_kernels.attention(queries, keys, values, scale, mask)
    if softcap is None and queries.shape[2] == 1 and isinstance(mask, mx.array):
        return _masked_decode_attention(queries, keys, values, scale, mask)
    if softcap is None:
        return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask)
    # Logit soft-capping has no fused kernel: compute the scores explicitly.
    n_rep = queries.shape[1] // keys.shape[1]
    if n_rep > 1:
        keys = mx.repeat(keys, n_rep, axis=1)
        values = mx.repeat(values, n_rep, axis=1)
    scores = (queries * scale) @ keys.swapaxes(-1, -2)
    scores = mx.tanh(scores / softcap) * softcap
    if isinstance(mask, str):
        n_q, n_k = scores.shape[-2:]
        mask = mx.arange(n_k)[None, :] <= mx.arange(n_k - n_q, n_k)[:, None]
    if mask is not None and mask.dtype == mx.bool_:
        scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
    elif mask is not None:
        scores = scores + mask.astype(scores.dtype)  # additive: 0 or -inf
    weights = mx.softmax(scores.astype(mx.float32), axis=-1).astype(values.dtype)
    return weights @ values


def _masked_decode_attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float,
                             mask: mx.array) -> mx.array:
    """One query per row with an array mask (a batch of rows of different lengths, or a sliding window).
    MLX's fused kernel takes no array mask on CUDA and falls back to unfused ops that repeat the keys per query
    head; here the query heads that share a kv head are the rows of one matmul, so each key is read once:
    2-3x faster at batch 16 on an H200 (bench/masked_decode_attention.py)."""
    B, n_heads, _, D = queries.shape
    n_kv = keys.shape[1]
    q = (queries * scale).reshape(B, n_kv, n_heads // n_kv, D)
    scores = q @ keys.swapaxes(-1, -2)  # [B, kv heads, query heads per kv head, T]
    if mask.dtype == mx.bool_:
        scores = mx.where(mask, scores, mx.array(-mx.inf, scores.dtype))
    else:
        scores = scores + mask
    weights = mx.softmax(scores, axis=-1, precise=True)
    return (weights @ values).reshape(B, n_heads, 1, values.shape[-1])


class RoPE(nn.Module):
    """Rotary embedding of HF's rotate-half layout, with precomputed per-pair periods (base ** (2i / dims))."""

    def __init__(self, dims: int, periods: mx.array):
        super().__init__()
        self.dims = dims
        self._periods = periods  # leading underscore: not a parameter, never saved or loaded

    def __call__(self, x: mx.array, offset: int = 0) -> mx.array:
        return mx.fast.rope(x, self.dims, traditional=False, base=None, scale=1.0, offset=offset, freqs=self._periods)


def _default_periods(dims: int, base: float, params: dict[str, Any]) -> mx.array:
    return base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)


def _linear_periods(dims: int, base: float, params: dict[str, Any]) -> mx.array:
    # Positions divided by factor is the same as every period multiplied by it.
    return _default_periods(dims, base, params) * float(params["factor"])


def _llama3_periods(dims: int, base: float, params: dict[str, Any]) -> mx.array:
    """Llama 3.1 scaling: long wavelengths stretched by `factor`, short ones kept, a smooth blend between."""
    factor = float(params["factor"])
    low = float(params.get("low_freq_factor", 1.0))
    high = float(params.get("high_freq_factor", 4.0))
    old_context = float(params["original_max_position_embeddings"])
    inv_freq = 1.0 / _default_periods(dims, base, params)
    wavelen = 2 * math.pi / inv_freq
    scaled = mx.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return 1.0 / mx.where(is_medium, smoothed, scaled)


def _freq_factor_periods(dims: int, base: float, params: dict[str, Any]) -> mx.array:
    """Explicit per-pair factors (`freq_factors`, one per rotary pair) multiplying the default periods: GGUF
    files carry Llama 3.1's scaling so (rope_freqs.weight, by which llama.cpp divides each frequency)."""
    factors = mx.array(params["freq_factors"], dtype=mx.float32)
    if factors.shape != (dims // 2,):
        raise ModelLoadError(f"rope freq_factors has {factors.size} values; {dims} rotary dims need {dims // 2}")
    return _default_periods(dims, base, params) * factors


_ROPE_TYPES = {
    "default": _default_periods,
    "linear": _linear_periods,
    "llama3": _llama3_periods,
    "freq_factors": _freq_factor_periods,
}


def make_rope(dims: int, rope_parameters: dict[str, Any]) -> RoPE:
    """Build a RoPE from one HF `rope_parameters` entry ({"rope_type", "rope_theta", scaling keys...})."""
    rope_type = rope_parameters.get("rope_type", rope_parameters.get("type", "default"))
    build = _ROPE_TYPES.get(rope_type)
    if build is None:
        raise ModelLoadError(f"unsupported rope_type {rope_type!r}; supported: {sorted(_ROPE_TYPES)}")
    return RoPE(dims, build(dims, float(rope_parameters.get("rope_theta", 10000.0)), rope_parameters))
