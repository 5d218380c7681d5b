"""The gated delta rule (Gated DeltaNet, Qwen3.5's linear-attention layers) and the causal depthwise convolution
before it, in MLX ops: the reference on every device and the CPU path.

Per value head the state S [Dv, Dk] (kept transposed relative to transformers' [Dk, Dv], see
models/recurrent_cache.py) takes each token as
    S <- exp(g_t) S;  S <- S + beta_t (v_t - S k_t) k_t^T;  o_t = S q_t
(decay, then the delta rule corrects what S already predicts for k_t, then the read sees token t).

A decode step runs that recurrence (`recurrent_gated_delta`), and so does a speculative verify step, keeping the
state after each of its few tokens for the rollback (`gated_delta_steps`). A prefill runs the equivalent chunked form
(`chunked_gated_delta`, transformers' torch_chunk_gated_delta_rule): within a chunk of C tokens the recurrence is a
unit lower-triangular system solved for all tokens at once, so a prompt costs T / C sequential steps of matmuls
instead of T. The two agree to float32 rounding, not bit for bit.
"""

from __future__ import annotations

import mlx.core as mx

from mlxd.models import ops

CHUNK = 64  # transformers' chunk size; any power of two gives the same numbers up to rounding


def causal_conv(x: mx.array, weight: mx.array, conv_state: mx.array | None, bias: mx.array | None = None,
                stepwise: bool = False) -> tuple[mx.array, mx.array]:
    """SiLU of the causal depthwise convolution of x [B, T, C] with weight [C, K] (the last tap multiplies the
    current token) plus `bias` [C] (Mamba-2's; Gated DeltaNet's has none), continuing from conv_state [B, K-1, C]
    (zeros before the sequence: None); and the new conv state, the last K-1 inputs. With `stepwise`, instead of
    the new state the whole window [B, K-1+T, C]: the state after token t is window[:, t+1 : t+K]."""
    batch, length, channels = x.shape
    taps = weight.shape[1]
    if conv_state is None:
        conv_state = mx.zeros((batch, taps - 1, channels), x.dtype)
    window = mx.concatenate([conv_state, x], axis=1)
    out = window[:, :length] * weight[:, 0]
    for j in range(1, taps):
        out = out + window[:, j:j + length] * weight[:, j]
    if bias is not None:
        out = out + bias
    if stepwise:
        return ops.activation(out, "silu"), window
    new_state = window[:, length:]
    if length > 1:
        # A copy: the slice would keep the whole chunk's input alive while the row waits to decode.
        new_state = mx.array(new_state)
    return ops.activation(out, "silu"), new_state


def l2_normalize(x: mx.array) -> mx.array:
    """x / sqrt(sum(x^2) + 1e-6) over the last axis (transformers' fixed eps, inside the sum)."""
    return x * mx.rsqrt((x * x).sum(axis=-1, keepdims=True) + 1e-6)


def recurrent_gated_delta(q: mx.array, k: mx.array, v: mx.array, g: mx.array, beta: mx.array,
                          state: mx.array) -> tuple[mx.array, mx.array]:
    """Token by token: q, k [B, T, H, Dk] (normalized, q scaled), v [B, T, H, Dv], log decays g and beta [B, T, H],
    state [B, H, Dv, Dk] (float32). Returns the outputs [B, T, H, Dv] and the new state."""
    out, states = recurrent_gated_delta_steps(q, k, v, g, beta, state)
    return out, states[-1]


def recurrent_gated_delta_steps(q: mx.array, k: mx.array, v: mx.array, g: mx.array, beta: mx.array,
                                state: mx.array) -> tuple[mx.array, list[mx.array]]:
    """recurrent_gated_delta's outputs and the state after each token (a verify step rolls back to one of them;
    a list, not stacked: stacking would copy them all while they are alive anyway)."""
    outs, states = [], []
    for t in range(q.shape[1]):
        state = state * mx.exp(g[:, t])[..., None, None]
        k_t = k[:, t]
        predicted = (state @ k_t[..., None])[..., 0]                 # [B, H, Dv]
        correction = beta[:, t, :, None] * (v[:, t] - predicted)
        state = state + correction[..., None] * k_t[..., None, :]
        outs.append((state @ q[:, t, :, :, None])[..., 0])
        states.append(state)
    return mx.stack(outs, axis=1), states


def chunked_gated_delta(q: mx.array, k: mx.array, v: mx.array, g: mx.array, beta: mx.array,
                        state: mx.array) -> tuple[mx.array, mx.array]:
    """The same as recurrent_gated_delta, computed a chunk of tokens at a time (see the module docstring)."""
    batch, length, heads, _ = q.shape
    size = min(CHUNK, 1 << (length - 1).bit_length())
    n = -(-length // size)

    def chunks(x: mx.array) -> mx.array:
        """[B, T, H, ...] -> [B, H, n, C, ...], zero-padded at the end: a padded token (k = 0, beta = 0, g = 0)
        leaves the state as it is."""
        pad = [(0, 0), (0, n * size - length)] + [(0, 0)] * (x.ndim - 2)
        x = mx.pad(x, pad).swapaxes(1, 2)
        return x.reshape(batch, heads, n, size, *x.shape[3:])

    q, k, v, g, beta = (chunks(x) for x in (q, k, v, g, beta))
    gamma = mx.cumsum(g, axis=-1)                                   # log decay from the chunk's start
    causal = mx.tril(mx.ones((size, size), dtype=mx.bool_))
    # decay[i, j] = exp(gamma_i - gamma_j) for j <= i: what token j's contribution has decayed by at token i.
    decay = mx.exp(mx.where(causal, gamma[..., :, None] - gamma[..., None, :], -mx.inf))
    k_beta = k * beta[..., None]
    lower = mx.where(mx.tril(causal, -1), (k_beta @ k.swapaxes(-1, -2)) * decay, 0)
    solve = _unit_lower_inverse(lower)                              # (I + lower)^-1
    new_values = solve @ (v * beta[..., None])                      # [B, H, n, C, Dv]
    decayed_keys = solve @ (k_beta * mx.exp(gamma)[..., None])      # [B, H, n, C, Dk]
    scores = (q @ k.swapaxes(-1, -2)) * decay                       # the diagonal included
    q_decayed = q * mx.exp(gamma)[..., None]
    last = gamma[..., -1]                                           # [B, H, n]
    k_to_end = k * mx.exp(last[..., None] - gamma)[..., None]

    outs = []
    for i in range(n):
        s_t = state.swapaxes(-1, -2)                                # [B, H, Dk, Dv]
        values = new_values[:, :, i] - decayed_keys[:, :, i] @ s_t
        outs.append(q_decayed[:, :, i] @ s_t + scores[:, :, i] @ values)
        state = state * mx.exp(last[:, :, i])[..., None, None] + values.swapaxes(-1, -2) @ k_to_end[:, :, i]
    out = mx.stack(outs, axis=2).reshape(batch, heads, n * size, -1)[:, :, :length]
    return out.swapaxes(1, 2), state


def _unit_lower_inverse(lower: mx.array) -> mx.array:
    """(I + lower)^-1 for strictly lower-triangular lower [..., n, n], n a power of two (see _inverse_flat)."""
    n = lower.shape[-1]
    return _inverse_flat(lower.reshape(-1, n, n)).reshape(lower.shape)


def _inverse_flat(lower: mx.array) -> mx.array:
    """(I + lower)^-1 for lower [m, n, n], by halves: [[A, 0], [B, D]]^-1 = [[A^-1, 0], [-D^-1 B A^-1, D^-1]],
    both diagonal halves inverted in one call. The halves join along the first axis, not a new one: MLX's CUDA
    kernels take at most 10 dimensions, and a new axis per level of a 64-token chunk would pass that."""
    m, n = lower.shape[0], lower.shape[-1]
    if n == 1:
        return mx.ones_like(lower)
    h = n // 2
    halves = _inverse_flat(mx.concatenate([lower[:, :h, :h], lower[:, h:, h:]]))
    first, second = halves[:m], halves[m:]
    corner = -(second @ lower[:, h:, :h] @ first)
    top = mx.concatenate([first, mx.zeros_like(first)], axis=-1)
    return mx.concatenate([top, mx.concatenate([corner, second], axis=-1)], axis=-2)


def gated_delta(q: mx.array, k: mx.array, v: mx.array, g: mx.array, beta: mx.array,
                state: mx.array | None) -> tuple[mx.array, mx.array]:
    """Outputs [B, T, H, Dv] (in v's dtype) and the new float32 state [B, H, Dv, Dk], from `state` (None: zeros).
    The arithmetic runs in float32, as transformers' does."""
    dtype = v.dtype
    q, k, v, g, beta, state = _in_float32(q, k, v, g, beta, state)
    run = recurrent_gated_delta if q.shape[1] == 1 else chunked_gated_delta
    out, state = run(q, k, v, g, beta, state)
    return out.astype(dtype), state


def gated_delta_steps(q: mx.array, k: mx.array, v: mx.array, g: mx.array, beta: mx.array,
                      state: mx.array | None) -> tuple[mx.array, list[mx.array]]:
    """gated_delta's outputs and the float32 state after each token, token by token: a verify step's few tokens, as
    exact as the decode steps they stand for."""
    dtype = v.dtype
    out, states = recurrent_gated_delta_steps(*_in_float32(q, k, v, g, beta, state))
    return out.astype(dtype), states


def _in_float32(q: mx.array, k: mx.array, v: mx.array, g: mx.array, beta: mx.array,
                state: mx.array | None) -> tuple[mx.array, ...]:
    """The inputs in float32 and the state, zeros where None."""
    batch, _, heads, dk = q.shape
    if state is None:
        state = mx.zeros((batch, heads, v.shape[-1], dk), mx.float32)
    return (*(x.astype(mx.float32) for x in (q, k, v, g, beta)), state)
