"""Attention sinks (gpt-oss): a learned logit per head joins each softmax row as one more key that has no value.
Every path of ops.attention that can receive them (MLX's fused kernel, the explicit soft-capped path, the grouped
masked-decode path, the NumPy CPU prefill kernel) must equal a float64 reference written as transformers'
eager_attention_forward computes it (MOE_NOTES §3.1): scores + mask, a sink column per head concatenated, the
row max subtracted, softmax, the sink column dropped before multiplying V."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxd.models import ops, ops_cpu_numpy, ops_mlx
from mlxd.models.base import create_attention_mask


def reference(q, k, v, scale, visible, sinks, softcap=None):
    """float64 attention with sinks; `visible` a boolean array broadcasting to [B, heads, T, keys] or None."""
    q, k, v = (np.asarray(a.astype(mx.float32), dtype=np.float64) for a in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)  # query head h reads kv head h // rep
    scores = q @ k.swapaxes(-1, -2) * scale
    if softcap is not None:
        scores = np.tanh(scores / softcap) * softcap
    if visible is not None:
        scores = np.where(np.asarray(visible), scores, -np.inf)
    if sinks is not None:
        column = np.broadcast_to(np.asarray(sinks, dtype=np.float64)[None, :, None, None], (*scores.shape[:-1], 1))
        scores = np.concatenate([scores, column], axis=-1)
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    if sinks is not None:
        probs = probs[..., :-1]
    return probs @ v


def inputs(batch, heads, kv_heads, queries, keys, dim, seed=0):
    mx.random.seed(seed)
    return (mx.random.normal((batch, heads, queries, dim)), mx.random.normal((batch, kv_heads, keys, dim)),
            mx.random.normal((batch, kv_heads, keys, dim)), mx.random.normal((heads,)) * 2)


def causal(queries, keys, window=None):
    """transformers' visibility: key j to query i iff j <= i and, with a window W, j > i - W (W keys)."""
    i = np.arange(keys - queries, keys)[:, None]
    j = np.arange(keys)[None, :]
    return (j <= i) & (j > i - window) if window else j <= i


def error(got, want):
    return float(np.abs(np.asarray(got, dtype=np.float64) - want).max())


# (heads, kv heads): plain, grouped, one kv head for all.
HEADS = [(4, 4), (8, 2), (6, 1)]


@pytest.mark.parametrize("heads,kv_heads", HEADS)
@pytest.mark.parametrize("mask_kind", ["none", "causal", "window", "window_additive"])
def test_fused_path_with_sinks(heads, kv_heads, mask_kind):
    """MLX 0.32.4's mx.fast.scaled_dot_product_attention takes `sinks`; the MLX backend hands them to it."""
    q, k, v, sinks = inputs(2, heads, kv_heads, 12, 30, 16)
    visible = {"none": None, "causal": causal(12, 30)}.get(mask_kind, causal(12, 30, window=5))
    mask: mx.array | str | None = None
    if mask_kind == "causal":
        mask = "causal"
    elif mask_kind == "window":
        mask = mx.array(visible)
    elif mask_kind == "window_additive":
        mask = mx.where(mx.array(visible), 0.0, -mx.inf)
    got = ops_mlx.MLXBackend().attention(q, k, v, 0.25, mask, sinks=sinks)
    assert error(got, reference(q, k, v, 0.25, visible, sinks)) < 2e-6


def test_fused_path_takes_float32_sinks_with_half_precision_queries():
    """A checkpoint may hold the sinks in float32 beside bfloat16 activations; MLX's kernel wants them to promote
    to the output type, so the backend casts them."""
    q, k, v, sinks = inputs(1, 4, 2, 6, 6, 16)
    got = ops_mlx.MLXBackend().attention(*(a.astype(mx.bfloat16) for a in (q, k, v)), 0.25, "causal", sinks=sinks)
    assert got.dtype == mx.bfloat16
    assert error(got.astype(mx.float32), reference(q, k, v, 0.25, causal(6, 6), sinks)) < 0.05


@pytest.mark.parametrize("heads,kv_heads", HEADS)
@pytest.mark.parametrize("softcap", [3.0, 1e9])
def test_softcapped_path_with_sinks(heads, kv_heads, softcap):
    """The explicit path: soft-capped scores (a cap of 1e9 leaves them as they are), the sink uncapped."""
    q, k, v, sinks = inputs(2, heads, kv_heads, 9, 20, 16)
    visible = causal(9, 20, window=6)
    got = ops.attention(q, k, v, 0.25, mx.array(visible), softcap=softcap, sinks=sinks)
    assert error(got, reference(q, k, v, 0.25, visible, sinks, softcap)) < 2e-6
    got = ops_mlx.softcapped_attention(q, k, v, 0.25, "causal", softcap, sinks)
    assert error(got, reference(q, k, v, 0.25, causal(9, 20), sinks, softcap)) < 2e-6


@pytest.mark.parametrize("kernels", ops.BACKENDS)
@pytest.mark.parametrize("heads,kv_heads", HEADS)
@pytest.mark.parametrize("additive", [False, True])
def test_masked_decode_path_with_sinks(kernels, heads, kv_heads, additive):
    """One query per row with an array mask (a batch of rows at different lengths and a sliding window): the
    grouped masked-decode path, in either backend."""
    q, k, v, sinks = inputs(3, heads, kv_heads, 1, 13, 16)
    starts = np.array([0, 4, 9])  # row r sees keys [starts[r], 13): left padding, or a window
    visible = (np.arange(13)[None, :] >= starts[:, None])[:, None, None, :]
    mask = mx.where(mx.array(visible), 0.0, -mx.inf) if additive else mx.array(visible)
    ops.use(kernels)
    try:
        got = ops.attention(q, k, v, 0.25, mask, sinks=sinks)
    finally:
        ops.use("mlx")
    assert got.shape == (3, heads, 1, 16)
    assert error(got, reference(q, k, v, 0.25, visible, sinks)) < 2e-6
    got = ops_mlx.grouped_attention(q, k, v, 0.25, mask, sinks)
    assert error(got, reference(q, k, v, 0.25, visible, sinks)) < 2e-6


@pytest.mark.parametrize("heads,kv_heads", HEADS)
@pytest.mark.parametrize("queries,keys,window", [(5, 5, None), (300, 300, None), (130, 500, None),
                                                 (2, 700, None), (40, 40, 16), (200, 260, 16)])
def test_numpy_prefill_path_with_sinks(heads, kv_heads, queries, keys, window):
    """The NumPy CPU prefill kernel: causal blocks (300 and 130 queries span several, which skip later keys), a
    boolean sliding-window mask as the models build it, grouped heads."""
    q, k, v, sinks = inputs(2, heads, kv_heads, queries, keys, 16)
    mask = create_attention_mask(queries, keys - queries, window)
    assert (mask == "causal") == (window is None)
    got = ops_cpu_numpy.attention(q, k, v, 0.25, mask, sinks)
    assert error(got, reference(q, k, v, 0.25, causal(queries, keys, window), sinks)) < 2e-6
    ops.use("numpy")
    try:
        through_ops = ops.attention(q, k, v, 0.25, mask, sinks=sinks)
    finally:
        ops.use("mlx")
    assert mx.array_equal(through_ops, got)


def test_numpy_prefill_with_sinks_in_smaller_blocks(monkeypatch):
    monkeypatch.setattr(ops_cpu_numpy, "SCORES_BYTES", 2 * 4 * 8 * 600 * 20)  # 20 query rows of 600 keys, 8 heads
    q, k, v, sinks = inputs(2, 8, 2, 100, 600, 8)
    got = ops_cpu_numpy.attention(q, k, v, 0.3, "causal", sinks)
    assert error(got, reference(q, k, v, 0.3, causal(100, 600), sinks)) < 2e-6


@pytest.mark.parametrize("kernels", ops.BACKENDS)
def test_sinks_take_probability_mass_and_add_no_value(kernels):
    """With every value 1, attention returns the weight the real keys keep: 1 - p(sink), the same in every
    position's row; a sink of -inf is no sink at all; a huge sink leaves almost nothing."""
    q, k, _, sinks = inputs(1, 4, 2, 7, 7, 16)
    ones = mx.ones((1, 2, 7, 16))
    ops.use(kernels)
    try:
        kept = ops.attention(q, k, ones, 0.25, "causal", sinks=sinks)
        plain = ops.attention(q, k, k, 0.25, "causal")
        no_sink = ops.attention(q, k, k, 0.25, "causal", sinks=mx.full((4,), -mx.inf))
        drowned = ops.attention(q, k, ones, 0.25, "causal", sinks=mx.full((4,), 80.0))
    finally:
        ops.use("mlx")
    scores = reference(q, k, mx.ones((1, 2, 7, 1)), 0.25, causal(7, 7), sinks)[..., 0]
    assert np.allclose(np.asarray(kept)[..., 0], scores, atol=2e-6)
    assert float(np.asarray(kept).max()) < 1.0
    assert mx.abs(no_sink - plain).max().item() < 1e-6
    assert float(mx.abs(drowned).max().item()) < 1e-20


@pytest.mark.parametrize("kernels", ops.BACKENDS)
def test_without_sinks_nothing_changes(kernels):
    """sinks=None is the attention every existing model computes, bit for bit."""
    q, k, v, _ = inputs(2, 8, 2, 20, 20, 16)
    ops.use(kernels)
    try:
        got = ops.attention(q, k, v, 0.25, "causal", sinks=None)
        want = ops.attention(q, k, v, 0.25, "causal")
    finally:
        ops.use("mlx")
    assert mx.array_equal(got, want)
