"""Mamba-2's scan (models/ssd.py): the chunked form equals the token-by-token recurrence from any state, whatever
the chunk size (dividing the length or not), with several heads per group of B and C."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxd.models.ssd import chunked_scan, recurrent_scan, scan, scan_steps


def _inputs(length: int, batch: int = 2, groups: int = 2, per_group: int = 3, head_dim: int = 4, n_state: int = 5):
    mx.random.seed(length)
    heads = groups * per_group
    x = mx.random.normal((batch, length, heads, head_dim))
    dt = mx.random.uniform(0.01, 0.3, (batch, length, heads))
    A = -mx.random.uniform(0.5, 4.0, (heads,))
    B = mx.random.normal((batch, length, groups, n_state))
    C = mx.random.normal((batch, length, groups, n_state))
    state = mx.random.normal((batch, heads, head_dim, n_state))
    return x, dt, A, B, C, state


@pytest.mark.parametrize("length,chunk", [(2, 16), (13, 4), (16, 16), (37, 8), (37, 16), (40, 5)])
def test_chunked_equals_recurrent(length, chunk):
    x, dt, A, B, C, state = _inputs(length)
    want_y, want_state = recurrent_scan(x, dt, A, B, C, state)
    y, new_state = chunked_scan(x, dt, A, B, C, state, chunk)
    assert mx.abs(y - want_y).max().item() < 1e-4
    assert mx.abs(new_state - want_state).max().item() < 1e-4


def test_head_h_reads_group_h_over_heads_per_group():
    """Three heads per group: heads 0-2 read group 0's B and C, heads 3-5 group 1's."""
    x, dt, A, B, C, _ = _inputs(1)
    y, state = scan(x, dt, A, B, C, None, 16)
    for h in range(6):
        g = h // 3
        want = (dt[:, 0, h, None] * x[:, 0, h])[..., None] * B[:, 0, g, None, :]
        assert mx.abs(state[:, h] - want).max().item() < 1e-6
        assert mx.abs(y[:, 0, h] - (want @ C[:, 0, g, :, None])[..., 0]).max().item() < 1e-5


def test_padded_positions_leave_the_state_alone():
    """A chunk size that does not divide the length pads the last chunk: the state is the unpadded one."""
    x, dt, A, B, C, state = _inputs(9)
    _, padded = chunked_scan(x, dt, A, B, C, state, 4)
    _, exact = chunked_scan(x, dt, A, B, C, state, 9)
    assert mx.abs(padded - exact).max().item() < 1e-5


def test_steps_keep_the_state_after_each_token():
    """A verify step's form: the recurrence's outputs, and after token t the state the first t + 1 tokens alone
    reach (what rollback sets a row to), bit for bit."""
    x, dt, A, B, C, state = _inputs(4)
    y, end = recurrent_scan(x, dt, A, B, C, state)
    y_s, states = scan_steps(x, dt, A, B, C, state)
    assert len(states) == 4 and mx.array_equal(y_s, y) and mx.array_equal(states[-1], end)
    for t in range(4):
        _, after = recurrent_scan(x[:, :t + 1], dt[:, :t + 1], A, B[:, :t + 1], C[:, :t + 1], state)
        assert mx.array_equal(states[t], after)
