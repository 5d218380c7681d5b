"""Decode attention with an array mask (rows of a batch at different lengths, sliding windows) takes mlxd's own
grouped-query path (models/ops_mlx.py), in either backend; it must equal MLX's fused attention with the same
mask."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxd.models import ops


@pytest.mark.parametrize("kernels", ops.BACKENDS)
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (6, 1)])
@pytest.mark.parametrize("additive", [False, True])
def test_masked_decode_attention_equals_mlx_fused(heads, kv_heads, additive, kernels):
    batch, keys, dim = 3, 11, 16
    mx.random.seed(0)
    q = mx.random.normal((batch, heads, 1, dim))
    k = mx.random.normal((batch, kv_heads, keys, dim))
    v = mx.random.normal((batch, kv_heads, keys, dim))
    starts = mx.array([0, 4, 9])  # row r sees keys [starts[r], keys)
    visible = (mx.arange(keys)[None, :] >= starts[:, None])[:, None, None, :]
    mask = mx.where(visible, 0.0, -mx.inf) if additive else visible
    ops.use(kernels)
    got = ops.attention(q, k, v, dim**-0.5, mask)
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=dim**-0.5, mask=mask)
    assert got.shape == (batch, heads, 1, dim)
    assert mx.abs(got - want).max().item() < 1e-5


@pytest.mark.parametrize("queries", [2, 5, 13])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2)])
@pytest.mark.parametrize("mask_kind", ["causal", "array", "none"])
def test_grouped_attention_for_a_few_queries_equals_mlx_fused(queries, heads, kv_heads, mask_kind):
    """A verify step's few queries per row, or a short prompt's (13: every key a query, as in a first chunk): on
    CUDA they take this path (the fused kernel plans every new shape), with the causal mask of queries that are
    the last of the keys, a per-row array mask, or none."""
    from mlxd.models.ops_mlx import grouped_attention

    batch, keys, dim = 3, 13, 16
    mx.random.seed(1)
    q = mx.random.normal((batch, heads, queries, dim))
    k = mx.random.normal((batch, kv_heads, keys, dim))
    v = mx.random.normal((batch, kv_heads, keys, dim))
    starts = mx.minimum(mx.array([0, 4, 8]), keys - queries)  # every query sees a key
    causal = mx.arange(keys)[None, :] <= (keys - queries + mx.arange(queries))[:, None]
    masks = {"causal": "causal", "none": None,
             "array": ((mx.arange(keys)[None, :] >= starts[:, None])[:, None, None, :] & causal)}
    mask = masks[mask_kind]
    got = grouped_attention(q, k, v, dim**-0.5, mask)
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=dim**-0.5, mask=mask)
    assert got.shape == (batch, heads, queries, dim)
    assert mx.abs(got - want).max().item() < 1e-5


def test_on_cuda_attention_with_small_scores_takes_the_explicit_ops(monkeypatch):
    """A verify step, a draft model's catch-up or a prompt chunk whose scores are small takes grouped_attention on
    CUDA, up to a whole first chunk of CUDA's 2,048 tokens at 32 heads; a long chunk at a long context (scores of
    2,048 x 4,096 per head) keeps MLX's fused kernel."""
    from mlxd.models import ops_mlx

    monkeypatch.setattr(ops_mlx, "_plans_per_shape", lambda: True)
    heads = 32
    assert ops_mlx._takes_grouped(4, "causal", 16 * heads * 300)         # a 16-row verify step
    assert ops_mlx._takes_grouped(64, None, 16 * heads * 140)            # a draft model's catch-up
    assert ops_mlx._takes_grouped(512, "causal", heads * 1500)           # a prompt chunk
    assert ops_mlx._takes_grouped(2048, "causal", heads * 2048)          # a prompt's first 2,048-token chunk
    assert not ops_mlx._takes_grouped(2048, "causal", heads * 4096)
    per_head = mx.zeros((1, heads, 4, 300), dtype=mx.bool_)               # a mask of each head's own
    assert not ops_mlx._takes_grouped(4, per_head, heads * 300)
    monkeypatch.setattr(ops_mlx, "_plans_per_shape", lambda: False)     # the CPU and Metal: the fused kernel
    assert not ops_mlx._takes_grouped(512, "causal", heads * 1500)
