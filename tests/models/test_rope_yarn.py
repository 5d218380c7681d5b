"""YaRN rope as transformers computes it (modeling_rope_utils._compute_yarn_parameters; MOE_NOTES §3.1): the
correction range rounded only when `truncate` (absent: true; gpt-oss: false), high clamped to head_dim - 1, a
linear ramp between original and factor-divided frequencies, and cos and sin multiplied by the attention factor.
The references below are written from the formulas in float64, not from mlxd's code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxd.loading.config import normalize_config
from mlxd.models.rope import make_rope, yarn_attention_factor, yarn_correction_range

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"

# The gpt_oss fixture's rope (config.json), head_dim 24.
FIXTURE = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
           "original_max_position_embeddings": 512, "rope_theta": 120000.0}
# Published gpt-oss-20b / 120b, head_dim 64.
PUBLISHED = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
             "original_max_position_embeddings": 4096, "rope_theta": 150000.0}


def reference_inv_freq(dims: int, p: dict) -> tuple[np.ndarray, float, float]:
    """float64 YaRN inverse frequencies and the (low, high) correction range, from the formulas."""
    base, factor, orig = p["rope_theta"], p["factor"], p["original_max_position_embeddings"]

    def correction_dim(rotations):
        return dims * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(p.get("beta_fast", 32)), correction_dim(p.get("beta_slow", 1))
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dims - 1)
    ramp = np.clip((np.arange(dims // 2) - low) / (high - low), 0, 1)
    base_inv = base ** (-np.arange(0, dims, 2) / dims)
    return base_inv * (1 - ramp) + base_inv / factor * ramp, low, high


def reference_rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, scaling: float) -> np.ndarray:
    """transformers' apply_rotary_pos_emb (rotate-half) with cos and sin multiplied by `scaling`, float64;
    positions [B] or [B, T] broadcast over heads."""
    dims = 2 * inv_freq.size
    angles = positions[..., None] * inv_freq  # [..., T, dims/2]
    cos = np.concatenate([np.cos(angles)] * 2, axis=-1) * scaling
    sin = np.concatenate([np.sin(angles)] * 2, axis=-1) * scaling
    rot, rest = x[..., :dims], x[..., dims:]
    half = dims // 2
    rotated = np.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    return np.concatenate([rot * cos + rotated * sin, rest], axis=-1)


def test_fixture_range_and_ratios_are_the_ones_transformers_gives():
    """MOE_NOTES §3.1 and SOURCE_moe.json: low 0.9591, high 4.5151 (truncated 0 and 5), base_i / inv_freq_i per
    pair 1, 1.0113, 1.3958, 2.2522, 5.8282, then 32 seven times, attention scaling 1.3465735902799727."""
    low, high = yarn_correction_range(24, 120000.0, FIXTURE)
    assert (round(low, 4), round(high, 4)) == (0.9591, 4.5151)
    assert yarn_correction_range(24, 120000.0, {**FIXTURE, "truncate": True}) == (0, 5)
    rope = make_rope(24, FIXTURE)
    base_periods = 120000.0 ** (np.arange(0, 24, 2) / 24)
    ratios = np.asarray(rope._periods, dtype=np.float64) / base_periods
    transformers_ratios = [1.0, 1.0112766027450562, 1.3958178758621216, 2.25223970413208, 5.828217506408691,
                           *[32.0] * 7]
    assert np.allclose(ratios, transformers_ratios, rtol=2e-6, atol=0)
    assert rope.attention_scaling == pytest.approx(1.3465735902799727, abs=1e-15)


def test_published_gpt_oss_range_is_not_rounded():
    """The real gpt-oss: low 8.09, high 17.40 of 32 pairs (mlx-lm 0.32.2 rounds them to 8 and 18)."""
    low, high = yarn_correction_range(64, 150000.0, PUBLISHED)
    assert (round(low, 2), round(high, 2)) == (8.09, 17.40)
    assert yarn_correction_range(64, 150000.0, {k: v for k, v in PUBLISHED.items() if k != "truncate"}) == (8, 18)


@pytest.mark.parametrize("dims,params", [
    (24, FIXTURE),
    (24, {**FIXTURE, "truncate": True}),
    (24, {k: v for k, v in FIXTURE.items() if k != "truncate"}),  # absent: truncated
    (64, PUBLISHED),
    (16, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048, "rope_theta": 10000.0}),
    (128, {"rope_type": "yarn", "factor": 40.0, "beta_fast": 32, "beta_slow": 1, "rope_theta": 10000.0,
           "original_max_position_embeddings": 4096, "mscale": 1.0, "mscale_all_dim": 1.0}),
])
def test_periods_equal_the_float64_formula(dims, params):
    want, _, _ = reference_inv_freq(dims, params)
    got = 1.0 / np.asarray(make_rope(dims, params)._periods, dtype=np.float64)
    assert np.allclose(got, want, rtol=3e-6, atol=0)


def test_truncate_moves_the_fixture_frequencies():
    """The mistake MOE_NOTES measures at 1.48 logits: the two differ on the ramp's pairs."""
    exact = np.asarray(make_rope(24, FIXTURE)._periods)
    rounded = np.asarray(make_rope(24, {**FIXTURE, "truncate": True})._periods)
    assert np.abs(exact / rounded - 1)[1:5].min() > 0.01


@pytest.mark.parametrize("params,want", [
    (FIXTURE, 0.1 * math.log(32.0) + 1),
    ({**FIXTURE, "attention_factor": 0.8}, 0.8),
    ({**FIXTURE, "factor": 1.0}, 1.0),
    ({**FIXTURE, "factor": 40.0, "mscale": 0.707, "mscale_all_dim": 0.707}, 1.0),  # DeepSeek-V3: the ratio
    ({**FIXTURE, "factor": 40.0, "mscale": 1.0, "mscale_all_dim": 0.5},
     (0.1 * math.log(40.0) + 1) / (0.05 * math.log(40.0) + 1)),
])
def test_attention_factor(params, want):
    assert yarn_attention_factor(params) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("dims,head_dim", [(24, 24), (16, 24)])
def test_rope_applies_the_frequencies_and_scales_cos_and_sin(dims, head_dim):
    """q and k both carry the factor (so q.k carries its square); with partial rotation only the rotated dims."""
    x = mx.random.normal((2, 3, 5, head_dim), key=mx.random.key(4))
    rope = make_rope(dims, FIXTURE)
    inv_freq, _, _ = reference_inv_freq(dims, FIXTURE)
    scaling = 0.1 * math.log(32.0) + 1
    x64 = np.asarray(x, dtype=np.float64)
    got = rope(x, offset=37)
    want = reference_rope(x64, np.arange(37, 42, dtype=np.float64), inv_freq, scaling)
    assert np.abs(np.asarray(got) - want).max() < 2e-5
    # Rows of a decode batch at different positions (an array offset), one token each.
    step = x[:, :, :1]
    offsets = mx.array([3, 300])
    got = rope(step, offset=offsets)
    want = reference_rope(np.asarray(step, dtype=np.float64), np.array([[[3.0]], [[300.0]]]), inv_freq, scaling)
    assert np.abs(np.asarray(got) - want).max() < 5e-5


@pytest.mark.parametrize("name", ["config.json", "config_v4.json"])
def test_both_config_layouts_give_the_fixture_rope(name):
    """transformers 5 (`rope_parameters`) and the published layout (`rope_theta` + `rope_scaling`) both keep
    `truncate: false` and the theta through normalize_config."""
    config = normalize_config(json.loads((PARITY / "gpt_oss" / name).read_text()))
    entry = config["rope_parameters"]
    assert entry["truncate"] is False and entry["rope_theta"] == 120000.0
    assert mx.array_equal(make_rope(24, entry)._periods, make_rope(24, FIXTURE)._periods)
