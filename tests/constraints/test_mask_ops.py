"""The mask kernels against llguidance's NumPy reference: bitmask_to_allowed and apply_mask (MLX), and both
backends' mask_logits (MLX's select on the device; the NumPy backend's additive bias on the CPU) against each other."""

from __future__ import annotations

from unittest.mock import patch

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llguidance.numpy import apply_token_bitmask_inplace

from mlxd.models import ops_mlx
from mlxd.models.mask_buffers import MaskBuffers
from mlxd.models.ops_cpu_numpy import NumpyBackend
from mlxd.models.ops_mlx import MLXBackend, apply_mask, bitmask_to_allowed


@settings(max_examples=60, deadline=None, derandomize=True)
@given(rows=st.integers(1, 4), words=st.integers(1, 40), trim=st.integers(0, 31), seed=st.integers(0, 2**32 - 1),
       density=st.sampled_from([0.0, 0.02, 0.5, 1.0]))
def test_bitmask_to_allowed_agrees_with_llguidance(rows, words, trim, seed, density):
    rng = np.random.default_rng(seed)
    width = max(1, 32 * words - trim)
    bits = rng.random((rows, 32 * words)) < density
    masks = np.packbits(bits, axis=1, bitorder="little").view(np.int32)  # bit i of word w: token 32*w + i
    logits = np.zeros((rows, width), dtype=np.float32)
    apply_token_bitmask_inplace(logits, masks)
    expected = np.isfinite(logits)
    allowed = bitmask_to_allowed(mx.array(masks), width)
    assert allowed.dtype == mx.bool_ and allowed.shape == (rows, width)
    assert np.array_equal(np.array(allowed), expected)
    assert np.array_equal(np.array(bitmask_to_allowed(mx.array(masks[0]), width)), expected[0])  # one row


def test_the_sign_bit_is_token_31():
    mask = mx.array(np.array([-(2**31), 1], dtype=np.int32))
    assert np.flatnonzero(np.array(bitmask_to_allowed(mask, 64))).tolist() == [31, 32]


def test_a_width_past_the_mask_is_refused():
    with pytest.raises(ValueError):
        bitmask_to_allowed(mx.zeros((2,), dtype=mx.int32), 65)


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])
def test_apply_mask_keeps_the_dtype_and_the_allowed_logits(dtype):
    logits = mx.random.normal((3, 70), key=mx.random.key(0)).astype(dtype)
    allowed = mx.random.uniform(shape=(3, 70), key=mx.random.key(1)) < 0.3
    masked = apply_mask(logits, allowed)
    assert masked.dtype == dtype and masked.shape == logits.shape
    kept = np.array(allowed)
    got, was = np.array(masked.astype(mx.float32)), np.array(logits.astype(mx.float32))
    assert np.array_equal(got[kept], was[kept])
    assert np.all(np.isneginf(got[~kept]))
    one_row = apply_mask(logits, allowed[0])  # one mask broadcast over rows
    assert np.all(np.isneginf(np.array(one_row.astype(mx.float32))[:, ~kept[0]]))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(batch=st.integers(1, 5), words=st.integers(1, 12), trim=st.sampled_from([0, 0, 1, 17, 31]),
       wider=st.booleans(), seed=st.integers(0, 2**32 - 1), density=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
       some_rows=st.booleans(), positions=st.sampled_from([0, 1, 3]), dtype=st.sampled_from([mx.float32, mx.bfloat16]))
def test_both_backends_mask_alike(batch, words, trim, wider, seed, density, some_rows, positions, dtype):
    """The same masked logits from either backend: every row, some rows (the others' masks padded, or the rows
    gathered and scattered back), and a verify step's [B, L, V]; on MLX by the compiled select (logits a multiple
    of 32 wide) and by bitmask_to_allowed's ops, uploaded by mx.array's copy or written into a MaskBuffers' arrays.
    `wider`: masks a word wider than the logits need (a tokenizer wider than the model's logits)."""
    rng = np.random.default_rng(seed)
    width = max(1, 32 * words - trim)
    rows = sorted(rng.choice(batch, size=rng.integers(1, batch + 1), replace=False).tolist()) if some_rows else None
    lead = (batch,) + ((positions,) if positions else ())
    masked_lead = ((len(rows),) if rows is not None else (batch,)) + lead[1:]
    bits = rng.random(masked_lead + (32 * (words + wider),)) < density
    masks = np.packbits(bits, axis=-1, bitorder="little").view(np.int32)
    logits = mx.array(rng.normal(size=lead + (width,)).astype(np.float32)).astype(dtype)
    host = NumpyBackend().mask_logits(logits, masks, rows)
    written = NumpyBackend().apply_masks(logits, NumpyBackend().upload_masks(masks, rows, tuple(logits.shape),
                                                                             MaskBuffers()))
    assert np.array_equal(np.array(host.astype(mx.float32)), np.array(written.astype(mx.float32)))
    backend = MLXBackend()
    for pad, fused, buffers in ((True, True, None), (True, False, None), (False, True, None),
                                (True, True, MaskBuffers())):
        with patch.object(ops_mlx, "PAD_MASKED_ROWS", pad), patch.object(ops_mlx, "FUSED_MASKS", fused):
            uploaded = backend.upload_masks(masks, rows, tuple(logits.shape), buffers)
            device = backend.apply_masks(logits, uploaded)
        assert host.dtype == device.dtype == dtype and host.shape == device.shape == logits.shape
        assert np.array_equal(np.array(host.astype(mx.float32)), np.array(device.astype(mx.float32)))


def test_the_host_bias_refuses_a_width_past_the_mask():
    with pytest.raises(ValueError):
        NumpyBackend().mask_logits(mx.zeros((1, 65)), np.zeros((1, 2), dtype=np.int32))
