"""KV caches and masks: cached attention equals attention over the whole sequence with the right mask."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxd.models import ops
from mlxd.models.base import create_attention_mask
from mlxd.models.cache import KVCache, RotatingKVCache, make_layer_caches

B, HEADS, KV_HEADS, DIM = 2, 4, 2, 8


def _sequence(n: int, seed: int = 0) -> tuple[mx.array, mx.array, mx.array]:
    key = mx.random.key(seed)
    kq, kk, kv = mx.random.split(key, 3)
    return (
        mx.random.normal((B, HEADS, n, DIM), key=kq),
        mx.random.normal((B, KV_HEADS, n, DIM), key=kk),
        mx.random.normal((B, KV_HEADS, n, DIM), key=kv),
    )


def _reference(q, k, v, window):
    n = q.shape[2]
    mask = np.tril(np.ones((n, n), dtype=bool))
    if window is not None:
        mask &= ~np.tril(np.ones((n, n), dtype=bool), -window)
    return ops.attention(q, k, v, DIM**-0.5, mx.array(mask))


def _cached(cache, q, k, v, chunks, window):
    outs, start = [], 0
    for size in chunks:
        sl = slice(start, start + size)
        mask = cache.make_mask(size, window)
        keys, values = cache.update_and_fetch(k[:, :, sl], v[:, :, sl])
        outs.append(ops.attention(q[:, :, sl], keys, values, DIM**-0.5, mask))
        mx.eval(outs[-1], cache.state)
        start += size
    return mx.concatenate(outs, axis=2)


SCHEDULES = [[1] * 30, [30], [3, 5, 1, 1, 17, 1, 1, 1], [9, 1, 1, 1, 1, 1, 16], [4, 4, 4, 4, 4, 4, 6], [2, 25, 3]]


@pytest.mark.parametrize("window", [1, 4, 8, 29, 64])
@pytest.mark.parametrize("chunks", SCHEDULES)
def test_rotating_cache_equals_windowed_full_attention(window, chunks):
    q, k, v = _sequence(sum(chunks))
    got = _cached(RotatingKVCache(window, step=4), q, k, v, chunks, window)
    assert mx.abs(got - _reference(q, k, v, window)).max().item() < 1e-5


@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("chunks", SCHEDULES)
def test_full_cache_equals_full_attention(window, chunks):
    q, k, v = _sequence(sum(chunks), seed=1)
    cache = KVCache(step=4)
    got = _cached(cache, q, k, v, chunks, window)
    assert mx.abs(got - _reference(q, k, v, window)).max().item() < 1e-5
    # Storage grows a block at a time, never by more than one step beyond what is used.
    assert cache.offset == 30 and 30 <= cache.keys.shape[2] < 30 + 4


def test_rotating_cache_keeps_only_the_window():
    cache = RotatingKVCache(6, step=4)
    _, k, v = _sequence(20)
    for i in range(20):
        cache.update_and_fetch(k[:, :, i : i + 1], v[:, :, i : i + 1])
    assert cache.offset == 20 and cache.keys.shape[2] == 6
    cache.update_and_fetch(k[:, :, :9], v[:, :, :9])
    assert cache.offset == 29 and cache.keys.shape[2] == 6


def test_full_cache_trim_then_append_overwrites_the_trimmed_positions():
    _, k, v = _sequence(10)
    cache = KVCache(step=4)
    cache.update_and_fetch(k[:, :, :7], v[:, :, :7])
    assert cache.trim(3) == 3 and cache.offset == 4
    keys, _ = cache.update_and_fetch(k[:, :, 7:10], v[:, :, 7:10])
    expected = mx.concatenate([k[:, :, :4], k[:, :, 7:10]], axis=2)
    assert mx.array_equal(keys, expected)
    cache.reset()
    assert cache.offset == 0 and cache.update_and_fetch(k[:, :, :1], v[:, :, :1])[0].shape[2] == 1


def test_rotating_cache_trims_only_inside_its_window():
    _, k, v = _sequence(12)
    cache = RotatingKVCache(8, step=4)
    cache.update_and_fetch(k[:, :, :5], v[:, :, :5])
    assert cache.is_trimmable() and cache.trim(2) == 2 and cache.offset == 3
    keys, _ = cache.update_and_fetch(k[:, :, 5:6], v[:, :, 5:6])
    assert mx.array_equal(keys, mx.concatenate([k[:, :, :3], k[:, :, 5:6]], axis=2))
    cache.update_and_fetch(k[:, :, :8], v[:, :, :8])
    assert not cache.is_trimmable()
    with pytest.raises(ValueError, match="window"):
        cache.trim(1)
    cache.reset()
    assert cache.offset == 0 and cache.state == []


def test_make_layer_caches_picks_rotating_for_windowed_layers():
    caches = make_layer_caches([4, None, 4])
    assert [type(c) for c in caches] == [RotatingKVCache, KVCache, RotatingKVCache]
    assert caches[0].window == 4


@pytest.mark.parametrize(
    "length,offset,window,key_start,expected",
    [
        (1, 0, None, 0, None),
        (1, 50, None, 0, None),
        (4, 0, None, 0, "causal"),
        (4, 10, None, 0, "causal"),
        (1, 3, 4, 0, None),  # the query at 3 sees keys 0..3: all four within the window
        (1, 4, 4, 0, [[0, 1, 1, 1, 1]]),
        (3, 0, 2, 0, [[1, 0, 0], [1, 1, 0], [0, 1, 1]]),
        (2, 3, 2, 2, [[1, 1, 0], [0, 1, 1]]),  # keys start at position 2
        (3, 0, 8, 0, "causal"),
    ],
)
def test_create_attention_mask(length, offset, window, key_start, expected):
    mask = create_attention_mask(length, offset, window, key_start)
    if expected is None or isinstance(expected, str):
        assert mask == expected
    else:
        assert mask.tolist() == np.array(expected, dtype=bool).tolist()


@pytest.mark.parametrize("mask", [None, "causal", "window"])
def test_softcapped_attention_with_a_huge_cap_equals_the_fused_kernel(mask):
    q, k, v = _sequence(9, seed=2)
    if mask == "window":
        mask = create_attention_mask(9, 0, 3)
    fused = ops.attention(q, k, v, 0.3, mask)
    explicit = ops.attention(q, k, v, 0.3, mask, softcap=1e6)
    assert mx.abs(fused - explicit).max().item() < 1e-4


def test_softcap_bounds_the_scores():
    q, k, v = _sequence(3, seed=3)
    v = mx.broadcast_to(mx.arange(3, dtype=mx.float32)[None, None, :, None], v.shape)
    # With a cap of 1e-6 every score is ~0, so attention averages the values uniformly.
    out = ops.attention(q * 100, k, v, 1.0, None, softcap=1e-6)
    assert mx.allclose(out, mx.ones_like(out), atol=1e-4)
