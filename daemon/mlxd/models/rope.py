"""Rotary position embeddings and their scaling variants, built from one HF `rope_parameters` entry (mlx-lm
keeps these in rope_utils.py)."""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlxd.errors import ModelLoadError


class RoPE(nn.Module):
    """Rotary embedding of HF's rotate-half layout, with precomputed per-pair periods (base ** (2i / dims))."""

    def __init__(self, dims: int, periods: mx.array):
        super().__init__()
        self.dims = dims
        self._periods = periods  # leading underscore: not a parameter, never saved or loaded

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
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
