"""The arrays a step's masks are written into through NumPy (models/mask_buffers.py): what an array holds, how long
it keeps it, and the fall-back to mx.array's copy where an array's memory cannot be written so."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from mlxd.models import mask_buffers
from mlxd.models.mask_buffers import DEPTH, MaskBuffers
from mlxd.models.ops_mlx import MLXBackend


def _words(seed: int, shape=(3, 5, 1)) -> np.ndarray:
    return np.random.default_rng(seed).integers(-2**31, 2**31 - 1, size=shape, dtype=np.int32)


def test_an_array_holds_what_was_written_until_the_ring_comes_round():
    buffers = MaskBuffers()
    written = [_words(i) for i in range(DEPTH)]
    arrays = [buffers.write(w) for w in written]
    assert all(a is not None for a in arrays)
    for array, words in zip(arrays, written):  # the last DEPTH writes each kept in its own array
        assert np.array_equal(np.array(array), words)
    assert np.array_equal(np.array(mx.sum(arrays[0].astype(mx.int64))), written[0].astype(np.int64).sum())
    again = buffers.write(_words(99))
    assert again is arrays[0] and np.array_equal(np.array(again), _words(99))


def test_a_strided_source_new_shapes_and_dtypes_are_written_whole():
    buffers = MaskBuffers()
    wide = _words(1, (4, 9))
    for rows in (4, 2, 4):
        source = wide[:rows, :6, None]  # the fused select's words: a slice of wider masks
        assert np.array_equal(np.array(buffers.write(source)), source)
    bias = np.where(wide[:, :6] > 0, 0.0, -np.inf).astype(np.float32)  # the NumPy backend's additive bias
    written = buffers.write(bias)
    assert written.dtype == mx.float32 and np.array_equal(np.array(written), bias)


def test_where_arrays_cannot_be_written_through_numpy_the_masks_are_copied(monkeypatch):
    monkeypatch.setattr(mask_buffers, "_writable_array", lambda shape, dtype: (mx.zeros(shape, dtype=mx.int32), None))
    buffers = MaskBuffers()
    assert buffers.write(_words(0)) is None and buffers.write(_words(1)) is None
    bitmasks = _words(2, (2, 3))
    logits = mx.array(np.random.default_rng(3).normal(size=(2, 96)).astype(np.float32))
    masked = MLXBackend().apply_masks(logits, MLXBackend().upload_masks(bitmasks, None, (2, 96), buffers))
    assert np.array_equal(np.array(masked), np.array(MLXBackend().mask_logits(logits, bitmasks)))
