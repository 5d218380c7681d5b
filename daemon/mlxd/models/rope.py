"""Rotary position embeddings and their scaling variants, built from one HF `rope_parameters` entry (mlx-lm
keeps these in rope_utils.py)."""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlxd.errors import ModelLoadError


class RoPE(nn.Module):
    """Rotary embedding of HF's rotate-half layout (dims i and i + dims/2 rotate together), or with `traditional`
    of adjacent pairs (2i, 2i + 1: transformers' rope_interleave), with precomputed per-pair periods
    (base ** (2i / dims)), and transformers' `attention_scaling` (YaRN's mscale), which multiplies cos and sin and
    so the rotated dims."""

    def __init__(self, dims: int, periods: mx.array, attention_scaling: float = 1.0, traditional: bool = False):
        super().__init__()
        self.dims = dims
        self.attention_scaling = attention_scaling
        self.traditional = traditional
        self._periods = periods  # leading underscore: not a parameter, never saved or loaded

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        out = mx.fast.rope(x, self.dims, traditional=self.traditional, base=None, scale=1.0, offset=offset,
                           freqs=self._periods)
        if self.attention_scaling == 1.0:
            return out
        if self.dims == x.shape[-1]:
            return out * self.attention_scaling
        return mx.concatenate([out[..., : self.dims] * self.attention_scaling, out[..., self.dims :]], axis=-1)


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


def yarn_correction_range(dims: int, base: float, params: dict[str, Any]) -> tuple[float, float]:
    """The pairs between which YaRN's ramp runs from the original frequency to frequency / factor: transformers'
    find_correction_range, rounded outwards only when `truncate` (true when absent; gpt-oss says false)."""
    context = float(params["original_max_position_embeddings"])

    def pair(rotations: float) -> float:
        return dims * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = pair(float(params.get("beta_fast") or 32)), pair(float(params.get("beta_slow") or 1))
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dims - 1)  # dims - 1 (not dims / 2 - 1), as transformers clamps


def _yarn_periods(dims: int, base: float, params: dict[str, Any]) -> mx.array:
    """YaRN (transformers' _compute_yarn_parameters, in float32 as it computes them): pairs below the correction
    range keep their frequency, pairs above it are divided by `factor`, a linear ramp between."""
    factor = float(params["factor"])
    low, high = yarn_correction_range(dims, base, params)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = mx.clip((mx.arange(dims // 2, dtype=mx.float32) - low) / (high - low), 0, 1)
    periods = _default_periods(dims, base, params)
    kept = 1 - ramp  # transformers' inv_freq_extrapolation_factor
    inv_freq = 1.0 / (factor * periods) * (1 - kept) + 1.0 / periods * kept
    return 1.0 / inv_freq


def yarn_attention_factor(params: dict[str, Any]) -> float:
    """YaRN's `attention_factor` (mscale) that multiplies cos and sin: the config's, else 0.1 ln(factor) + 1, or the
    ratio of two such terms when the config gives `mscale` and `mscale_all_dim` (DeepSeek)."""
    if params.get("attention_factor") is not None:
        return float(params["attention_factor"])
    factor = float(params["factor"])

    def mscale(weight: float) -> float:
        return 1.0 if factor <= 1 else 0.1 * weight * math.log(factor) + 1.0

    if params.get("mscale") and params.get("mscale_all_dim"):
        return mscale(float(params["mscale"])) / mscale(float(params["mscale_all_dim"]))
    return mscale(1.0)


_ROPE_TYPES = {
    "default": _default_periods,
    "linear": _linear_periods,
    "llama3": _llama3_periods,
    "freq_factors": _freq_factor_periods,
    "yarn": _yarn_periods,
}

# Rope types whose cos and sin carry a factor (transformers' attention_scaling); 1 for the others.
_ATTENTION_SCALING = {"yarn": yarn_attention_factor}


def make_rope(dims: int, rope_parameters: dict[str, Any], traditional: bool = False) -> RoPE:
    """Build a RoPE from one HF `rope_parameters` entry ({"rope_type", "rope_theta", scaling keys...});
    `traditional`: rotate adjacent pairs (RoPE's docstring)."""
    rope_type = rope_parameters.get("rope_type", rope_parameters.get("type", "default"))
    build = _ROPE_TYPES.get(rope_type)
    if build is None:
        raise ModelLoadError(f"unsupported rope_type {rope_type!r}; supported: {sorted(_ROPE_TYPES)}")
    scaling = _ATTENTION_SCALING.get(rope_type)
    periods = build(dims, float(rope_parameters.get("rope_theta", 10000.0)), rope_parameters)
    return RoPE(dims, periods, 1.0 if scaling is None else scaling(rope_parameters), traditional)
