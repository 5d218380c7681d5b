"""Mamba-2's selective state space scan (SSD) in MLX ops: the reference on every device and the CPU path.

Per head h (of H, in G groups; head h reads group h // (H / G) of B and C) the state S [P, N] takes each token as
    S <- exp(dt_t A) S + dt_t x_t B_t^T;   y_t = S C_t
with x_t [P] the head's input, B_t, C_t [N] its group's, dt_t > 0 its step size and A < 0 its decay rate (the
D skip and the gate are the caller's).

A decode step runs that recurrence (`recurrent_scan`), and so does a speculative verify step, keeping the state
after each of its few tokens for the rollback (`scan_steps`). A prefill runs the equivalent chunked form
(`chunked_scan`, the "state space duality" of the Mamba-2 paper): within a chunk of L tokens the outputs are one
masked, decayed attention-like product C B^T over the chunk plus what the state carried in gives, and the state
moves from chunk to chunk in one step each, so a prompt costs T / L sequential steps instead of T. The two agree to
float32 rounding, not bit for bit.

Layouts: x [b, T, H, P], dt [b, T, H], B and C [b, T, G, N]; the state [b, H, P, N] (as transformers and
expected_state.safetensors hold it), float32.
"""

from __future__ import annotations

import mlx.core as mx


def recurrent_scan(x: mx.array, dt: mx.array, A: mx.array, B: mx.array, C: mx.array,
                   state: mx.array) -> tuple[mx.array, mx.array]:
    """Token by token; returns y [b, T, H, P] and the new state."""
    y, states = recurrent_scan_steps(x, dt, A, B, C, state)
    return y, states[-1]


def recurrent_scan_steps(x: mx.array, dt: mx.array, A: mx.array, B: mx.array, C: mx.array,
                         state: mx.array) -> tuple[mx.array, list[mx.array]]:
    """recurrent_scan's y and the state after each token (a verify step rolls back to one of them; a list, not
    stacked: stacking would copy them all while they are alive anyway)."""
    heads_per_group = x.shape[2] // B.shape[2]
    B, C = mx.repeat(B, heads_per_group, axis=2), mx.repeat(C, heads_per_group, axis=2)  # [b, T, H, N]
    decay = mx.exp(dt * A)
    outs, states = [], []
    for t in range(x.shape[1]):
        inflow = (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]   # [b, H, P, N]
        state = decay[:, t, :, None, None] * state + inflow
        outs.append((state @ C[:, t, :, :, None])[..., 0])
        states.append(state)
    return mx.stack(outs, axis=1), states


def chunked_scan(x: mx.array, dt: mx.array, A: mx.array, B: mx.array, C: mx.array, state: mx.array,
                 chunk: int) -> tuple[mx.array, mx.array]:
    """The same as recurrent_scan, `chunk` tokens at a time (see the module docstring)."""
    batch, length, heads, head_dim = x.shape
    groups, n_state = B.shape[2], B.shape[3]
    per_group = heads // groups
    size = min(chunk, length)
    n = -(-length // size)

    def chunks(a: mx.array, order: tuple[int, ...]) -> mx.array:
        """[b, T, G, ...] zero-padded to n chunks of L (a padded token has dt = 0: it neither decays nor feeds the
        state), split [b, n, L, G, ...] and transposed to `order`."""
        a = mx.pad(a, [(0, 0), (0, n * size - length)] + [(0, 0)] * (a.ndim - 2))
        return a.reshape(batch, n, size, groups, *a.shape[3:]).transpose(order)

    xs = chunks(x.reshape(batch, length, groups, per_group, head_dim), (0, 3, 4, 1, 2, 5))  # [b, G, R, n, L, P]
    dts = chunks(dt.reshape(batch, length, groups, per_group), (0, 3, 4, 1, 2))            # [b, G, R, n, L]
    Bs = chunks(B, (0, 3, 1, 2, 4))[:, :, None]                                            # [b, G, 1, n, L, N]
    Cs = chunks(C, (0, 3, 1, 2, 4))[:, :, None]
    log_decay = dts * A.reshape(groups, per_group, 1, 1)
    gamma = mx.cumsum(log_decay, axis=-1)            # log decay from the chunk's start to each token
    causal = mx.tril(mx.ones((size, size), dtype=mx.bool_))
    # decay[i, j] = exp(gamma_i - gamma_j) for j <= i: how much token j's input has decayed by token i.
    decay = mx.exp(mx.where(causal, gamma[..., :, None] - gamma[..., None, :], -mx.inf))
    inputs = xs * dts[..., None]                     # dt_j x_j
    within = ((Cs @ Bs.swapaxes(-1, -2)) * decay) @ inputs
    last = gamma[..., -1]                            # [b, G, R, n]
    # Each chunk's own contribution to the state at its end: sum_j exp(gamma_last - gamma_j) dt_j x_j B_j^T.
    local = (inputs * mx.exp(last[..., None] - gamma)[..., None]).swapaxes(-1, -2) @ Bs   # [b, G, R, n, P, N]
    carried = state.reshape(batch, groups, per_group, head_dim, n_state)
    before = []
    for i in range(n):
        before.append(carried)
        carried = mx.exp(last[..., i])[..., None, None] * carried + local[:, :, :, i]
    entering = mx.stack(before, axis=3)              # the state before each chunk
    carried_in = mx.exp(gamma)[..., None] * (Cs @ entering.swapaxes(-1, -2))
    y = (within + carried_in).reshape(batch, heads, n * size, head_dim)[:, :, :length]
    return y.swapaxes(1, 2), carried.reshape(batch, heads, head_dim, n_state)


def scan(x: mx.array, dt: mx.array, A: mx.array, B: mx.array, C: mx.array, state: mx.array | None,
         chunk: int) -> tuple[mx.array, mx.array]:
    """y [b, T, H, P] and the new state [b, H, P, N], from `state` (None: zeros), both float32: the arithmetic
    runs in float32, as transformers' does."""
    x, dt, A, B, C, state = _in_float32(x, dt, A, B, C, state)
    if x.shape[1] == 1:
        return recurrent_scan(x, dt, A, B, C, state)
    return chunked_scan(x, dt, A, B, C, state, chunk)


def scan_steps(x: mx.array, dt: mx.array, A: mx.array, B: mx.array, C: mx.array,
               state: mx.array | None) -> tuple[mx.array, list[mx.array]]:
    """scan's y and the state after each token, token by token: a verify step's few tokens, as exact as the decode
    steps they stand for."""
    return recurrent_scan_steps(*_in_float32(x, dt, A, B, C, state))


def _in_float32(x: mx.array, dt: mx.array, A: mx.array, B: mx.array, C: mx.array,
                state: mx.array | None) -> tuple[mx.array, ...]:
    """The inputs in float32 and the state, zeros where None."""
    batch, _, heads, head_dim = x.shape
    if state is None:
        state = mx.zeros((batch, heads, head_dim, B.shape[-1]), mx.float32)
    return (*(a.astype(mx.float32) for a in (x, dt, A, B, C)), state)
