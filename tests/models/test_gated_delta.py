"""The gated delta rule's chunked form (prefill) equals its token-by-token recurrence (decode) from any state, for
lengths that fill, cut and overrun the 64-token chunks; the causal conv continues across calls."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxd.models.gated_delta import (
    causal_conv,
    chunked_gated_delta,
    gated_delta_steps,
    l2_normalize,
    recurrent_gated_delta,
)


def _inputs(length: int, seed: int, heads: int = 3, dk: int = 8, dv: int = 5):
    keys = mx.random.split(mx.random.key(seed), 6)
    q = l2_normalize(mx.random.normal((2, length, heads, dk), key=keys[0])) * dk**-0.5
    k = l2_normalize(mx.random.normal((2, length, heads, dk), key=keys[1]))
    v = mx.random.normal((2, length, heads, dv), key=keys[2])
    g = -mx.random.uniform(0.0, 0.3, (2, length, heads), key=keys[3])
    beta = mx.random.uniform(0.0, 1.0, (2, length, heads), key=keys[4])
    state = mx.random.normal((2, heads, dv, dk), key=keys[5])
    return q, k, v, g, beta, state


@pytest.mark.parametrize("length", [2, 5, 63, 64, 65, 130])
def test_chunked_equals_recurrent_from_a_state(length):
    q, k, v, g, beta, state = _inputs(length, length)
    out_r, state_r = recurrent_gated_delta(q, k, v, g, beta, state)
    out_c, state_c = chunked_gated_delta(q, k, v, g, beta, state)
    assert out_c.shape == out_r.shape == (2, length, 3, 5)
    assert mx.abs(out_c - out_r).max().item() < 1e-4
    assert mx.abs(state_c - state_r).max().item() < 1e-4


def test_chunked_runs_continue_one_another():
    q, k, v, g, beta, state = _inputs(100, 7)
    whole, end = chunked_gated_delta(q, k, v, g, beta, state)
    first, middle = chunked_gated_delta(q[:, :37], k[:, :37], v[:, :37], g[:, :37], beta[:, :37], state)
    second, end2 = chunked_gated_delta(q[:, 37:], k[:, 37:], v[:, 37:], g[:, 37:], beta[:, 37:], middle)
    assert mx.abs(mx.concatenate([first, second], axis=1) - whole).max().item() < 1e-4
    assert mx.abs(end2 - end).max().item() < 1e-4


def test_causal_conv_continues_from_its_state():
    x = mx.random.normal((1, 11, 6), key=mx.random.key(1))
    weight = mx.random.normal((6, 4), key=mx.random.key(2))
    whole, state = causal_conv(x, weight, None)
    parts, carried = [], None
    for start, end in ((0, 2), (2, 3), (3, 9), (9, 11)):
        out, carried = causal_conv(x[:, start:end], weight, carried)
        parts.append(out)
    assert mx.allclose(mx.concatenate(parts, axis=1), whole, atol=1e-6)
    assert mx.array_equal(carried, state) and mx.array_equal(state, x[:, -3:])
    # The last tap multiplies the current token; before the sequence, zeros.
    first = x[0, 0] * weight[:, 3]
    assert mx.allclose(whole[0, 0], first * mx.sigmoid(first), atol=1e-6)


def test_unit_lower_inverse_keeps_few_dimensions():
    """(I + L)^-1 over a chunk's leading dims [B, H, n]: exact, and built without a new axis per halving (MLX's
    CUDA kernels take at most 10 dimensions; a 64-token chunk of [B, H, n, 64, 64] once needed 11)."""
    import numpy as np

    from mlxd.models.gated_delta import _unit_lower_inverse

    lower = mx.tril(mx.random.normal((2, 3, 2, 64, 64), key=mx.random.key(3)) * 0.1, -1)
    got = np.array(_unit_lower_inverse(lower), dtype=np.float64)
    want = np.linalg.inv(np.eye(64) + np.array(lower, dtype=np.float64))
    assert got.shape == (2, 3, 2, 64, 64)
    assert np.abs(got - want).max() < 1e-4


def test_steps_keep_the_state_after_each_token():
    """A verify step's form: the same outputs as the recurrence, and after token t the state that the first t + 1
    tokens alone reach (what rollback sets a row to), bit for bit."""
    q, k, v, g, beta, state = _inputs(5, 11)
    out, end = recurrent_gated_delta(q, k, v, g, beta, state)
    out_s, states = gated_delta_steps(q, k, v, g, beta, state)
    assert len(states) == 5 and mx.array_equal(out_s, out) and mx.array_equal(states[-1], end)
    for t in range(5):
        _, after = recurrent_gated_delta(q[:, :t + 1], k[:, :t + 1], v[:, :t + 1], g[:, :t + 1], beta[:, :t + 1],
                                         state)
        assert mx.array_equal(states[t], after)


def test_stepwise_conv_gives_its_window_whose_slices_are_the_states_after_each_token():
    x = mx.random.normal((2, 5, 6), key=mx.random.key(3))
    weight = mx.random.normal((6, 4), key=mx.random.key(4))
    start = mx.random.normal((2, 3, 6), key=mx.random.key(5))
    out, window = causal_conv(x, weight, start, stepwise=True)
    assert mx.array_equal(out, causal_conv(x, weight, start)[0]) and window.shape == (2, 8, 6)
    for t in range(5):
        assert mx.array_equal(window[:, t + 1:t + 4], causal_conv(x[:, :t + 1], weight, start)[1])
