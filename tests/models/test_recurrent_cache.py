"""A recurrent layer's cache: the batch joins, filters and gives back rows with their states, rows with nothing seen
start from zeros, snapshots restore only at their exact length, and the KV budget counts the states per row."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxd.engine.kv_budget import KvLayout
from mlxd.models.batch_cache import BatchPositions, batched
from mlxd.models.cache import KVCache
from mlxd.models.recurrent_cache import BatchRecurrentCache, RecurrentCache


def _row(seed: int, offset: int = 5) -> RecurrentCache:
    cache = RecurrentCache()
    cache.advance(mx.random.normal((1, 3, 8), key=mx.random.key(seed)),
                  mx.random.normal((1, 2, 4, 6), key=mx.random.key(seed + 100)), offset)
    return cache


def test_batched_names_the_recurrent_batch_class():
    assert isinstance(batched(RecurrentCache(), BatchPositions()), BatchRecurrentCache)


def test_rows_join_leave_and_come_back_with_their_states():
    positions = BatchPositions()
    batch = batched(RecurrentCache(), positions)
    batch.add_row(None)                       # a one-token prompt: nothing seen yet
    a, b = _row(1), _row(2, offset=9)
    batch.add_row(a.kept())
    batch.add_row(b.kept())
    positions.set([0, 5, 9])
    conv, state = batch.state
    assert conv.shape == (3, 3, 8) and state.shape == (3, 2, 4, 6)
    assert not conv[0].any().item() and not state[0].any().item()
    assert mx.array_equal(batch.row_state(2)[1], b.recurrent_state)
    batch.keep_rows([2, 1])
    positions.set([9, 5])
    assert mx.array_equal(batch.row_state(0)[0], b.conv_state)
    row = batch.row_cache(1)
    assert isinstance(row, RecurrentCache) and row.offset == 5
    assert mx.array_equal(row.recurrent_state, a.recurrent_state)
    batch.keep_rows([])
    assert batch.state == [] and batch.row_state(0) is None


def test_an_empty_row_before_the_first_state_gets_zeros_of_its_shape():
    batch = batched(RecurrentCache(), BatchPositions())
    batch.add_row(None)
    batch.add_row(None)
    batch.add_row(_row(3).kept())
    conv, state = batch.state
    assert conv.shape == (3, 3, 8) and not conv[:2].any().item()


def test_snapshot_restores_only_at_its_length():
    cache = _row(4, offset=7)
    snapshot = cache.snapshot()
    assert not snapshot.trimmable
    assert snapshot.restorable(7) and not snapshot.restorable(6) and not snapshot.restorable(8)
    restored = RecurrentCache()
    restored.restore(snapshot, 7)
    assert restored.offset == 7 and mx.array_equal(restored.recurrent_state, cache.recurrent_state)
    with pytest.raises(ValueError, match="cannot serve 6"):
        RecurrentCache().restore(snapshot, 6)
    with pytest.raises(ValueError, match="key/value"):
        KVCache().restore(snapshot, 7)
    assert RecurrentCache().kept() is None


def test_kv_layout_counts_recurrent_states_per_row_not_per_token():
    kv = KVCache()
    kv.update_and_fetch(mx.zeros((1, 2, 1, 16)), mx.zeros((1, 2, 1, 16)))
    layout = KvLayout.of([_row(5), kv])
    state_bytes = (3 * 8 + 2 * 4 * 6) * 4
    assert layout.row_bytes == state_bytes
    assert layout.bytes_for(10) == 10 * 2 * 2 * 16 * 4 + state_bytes
    assert layout.bytes_for(1000) - layout.bytes_for(10) == 990 * 2 * 2 * 16 * 4
    # Verify steps of up to 4 drafts: the states before the step and after each of its 5 positions.
    verifying = layout.verifying(4)
    assert verifying.row_bytes == 6 * state_bytes and verifying.layers == layout.layers


@pytest.mark.parametrize("kept", [[1, 4, 2], [3, 3, 3], [4, 1, 4]])
def test_rollback_sets_each_row_to_its_states_after_its_kept_positions(kept):
    """A verify step of L = 4 positions: row r keeps kept[r] of them; its conv state is the K-1 = 3 inputs ending at
    its last kept position, its recurrent state the one after it; the per-position states are then dropped."""
    batch = batched(RecurrentCache(), BatchPositions())
    for seed in range(3):
        batch.add_row(_row(seed).kept())
    assert not batch.stepwise(1) and batch.stepwise(4) and not RecurrentCache().stepwise(4)
    window = mx.random.normal((3, 3 + 4, 8), key=mx.random.key(7))   # the held conv state, then the 4 inputs
    states = [mx.random.normal((3, 2, 4, 6), key=mx.random.key(8 + t)) for t in range(4)]  # after each position
    batch.advance_steps(window, states)
    batch.rollback(kept)
    conv, state = batch.state
    assert conv.shape == (3, 3, 8) and state.shape == (3, 2, 4, 6)
    for r, k in enumerate(kept):
        assert mx.array_equal(conv[r], window[r, k:k + 3])
        assert mx.array_equal(state[r], states[k - 1][r])
    assert batch._steps is None
    with pytest.raises(ValueError, match="without a verify step"):
        batch.rollback(kept)
    batch.advance_steps(window, states)
    with pytest.raises(ValueError, match="cannot keep"):
        batch.rollback([0, 1, 1])
