"""The arrays a step's masks are written into through NumPy (models/mask_buffers.py): what an array holds, how long
it keeps it, and the fall-back to mx.array's copy where an array's memory cannot be written so."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxd.models import managed_memory, mask_buffers
from mlxd.models.mask_buffers import DEPTH, SHAPES, MaskBuffers, rows_of
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


def test_a_strided_source_fewer_rows_new_shapes_and_dtypes_are_written_whole():
    buffers = MaskBuffers()
    wide = _words(1, (4, 9))
    for rows in (4, 2, 4):
        source = wide[:rows, :6, None]  # the fused select's words: a slice of wider masks
        assert np.array_equal(np.array(rows_of(buffers.write(source), rows)), source)
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


def test_a_batch_larger_than_any_before_gets_arrays_with_room_for_it_and_fewer_rows_reuse_them():
    buffers = MaskBuffers()
    small = buffers.write(_words(0, (2, 5, 1)))
    large = buffers.write(_words(1, (5, 5, 1)))
    assert small.shape == (2, 5, 1) and large.shape == (5, 5, 1)
    for seed in range(2, 2 + DEPTH):  # 3 rows: the 5-row arrays, in turn, the first 3 rows written
        written = buffers.write(_words(seed, (3, 5, 1)))
        assert written.shape == (5, 5, 1)
        assert np.array_equal(np.array(rows_of(written, 3)), _words(seed, (3, 5, 1)))
    assert buffers.write(_words(9, (9, 5, 1))).shape == (10, 5, 1)  # outgrown again: twice the room


def test_only_so_many_row_shapes_are_served_the_others_are_copied():
    buffers = MaskBuffers()
    for words in range(1, SHAPES + 1):
        assert buffers.write(_words(words, (2, words, 1))) is not None
    assert buffers.write(_words(0, (2, SHAPES + 1, 1))) is None
    assert buffers.write(_words(0, (2, 1, 1))) is not None  # a shape served already still is


@pytest.mark.skipif(managed_memory.on_cuda(), reason="off CUDA only")
def test_memory_advice_is_cudas_only():
    """Off CUDA, nothing is advised and the arrays are written as they are."""
    assert not managed_memory.on_cuda() and not MaskBuffers().advised
    assert not managed_memory.keep_on_host(np.zeros(4, np.int32))


@pytest.mark.skipif(not managed_memory.on_cuda(), reason="needs MLX's CUDA backend")
def test_on_cuda_advised_masks_select_as_copied_ones_step_after_step(monkeypatch):
    """The arrays' memory advised to stay on the host (read by the device over the bus): what the select reads is
    what was written, as batches grow and shrink."""
    monkeypatch.setattr(mask_buffers, "ADVISE", True)
    backend, buffers, rng = MLXBackend(), MaskBuffers(), np.random.default_rng(0)
    for step, rows in enumerate((2, 16, 16, 5, 16, 1, 9)):
        logits = mx.array(rng.normal(size=(rows, 4096)).astype(np.float32))
        bitmasks = rng.integers(-2**31, 2**31 - 1, size=(rows, 128), dtype=np.int32)
        written = backend.apply_masks(logits, backend.upload_masks(bitmasks, None, (rows, 4096), buffers))
        assert np.array_equal(np.array(written), np.array(backend.mask_logits(logits, bitmasks))), step
    assert buffers.advised
