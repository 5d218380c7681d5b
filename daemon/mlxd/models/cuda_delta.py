"""The Gated DeltaNet decode step (Qwen3.5, Qwen3-Next) as two CUDA kernels, for models/ops_cuda.py: `conv_step`
(the causal conv over the kept inputs and this token, SiLU, the new conv state) and `gated_delta_step` (the q/k
normalization, decay, gate and the delta rule, reading the float32 state once and writing it once). The MLX ops of
models/gated_delta.py are the reference: ~55 graph nodes a layer where these are two."""

from __future__ import annotations

import mlx.core as mx

from mlxd.models import cuda_jit
from mlxd.models.base import DeltaHeads

# One thread per channel of one row: the conv over the K-1 kept inputs and this token, in float32, then SiLU.
_CONV_STEP = """
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int row = blockIdx.y;
    if (c >= C) return;
    const auto* kept = state + row * state_strides[0] + c * state_strides[2];
    const auto* w = weight + c * weight_strides[0];
    auto* kept_out = new_state + (size_t)row * (K - 1) * C + c;
    float acc = 0.f;
    #pragma unroll
    for (int t = 0; t < K - 1; ++t) {
        const T s = kept[t * state_strides[1]];
        acc += static_cast<float>(s) * static_cast<float>(w[t * weight_strides[1]]);
        if (t > 0) kept_out[(t - 1) * C] = s;
    }
    const T xv = x[row * x_strides[0] + c * x_strides[2]];
    acc += static_cast<float>(xv) * static_cast<float>(w[(K - 1) * weight_strides[1]]);
    kept_out[(K - 2) * C] = xv;
    out[(size_t)row * C + c] = static_cast<T>(acc / (1.f + expf(-acc)));
"""

# One warp per (row, value head, value index j): its lanes hold row j of the state [Dv, Dk], PER key columns each.
_GATED_DELTA_STEP = """
    constexpr int PER = (Dk + 31) / 32;
    const int lane = threadIdx.x;
    const int j = blockIdx.y * blockDim.y + threadIdx.y;
    const int n = blockIdx.z;  // row * Hv + value head
    if (j >= Dv) return;       // a whole warp shares j
    const int row = n / Hv, h = n % Hv;
    const int hk = Tiled ? h % Hk : h / (Hv / Hk);
    const auto* mixed_row = mixed + row * mixed_strides[0];
    const auto ms = mixed_strides[2];
    float qv[PER], kv[PER], qq = 0.f, kk = 0.f;
    #pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int d = lane + 32 * i;
        qv[i] = d < Dk ? static_cast<float>(mixed_row[(hk * Dk + d) * ms]) : 0.f;
        kv[i] = d < Dk ? static_cast<float>(mixed_row[((Hk + hk) * Dk + d) * ms]) : 0.f;
        qq += qv[i] * qv[i];
        kk += kv[i] * kv[i];
    }
    for (int o = 16; o > 0; o >>= 1) {
        qq += __shfl_xor_sync(0xffffffff, qq, o);
        kk += __shfl_xor_sync(0xffffffff, kk, o);
    }
    const float q_scale = rsqrtf(qq + 1e-6f) * rsqrtf(static_cast<float>(Dk));
    const float k_scale = rsqrtf(kk + 1e-6f);
    const float gate_in = static_cast<float>(a[row * a_strides[0] + h * a_strides[2]]) + static_cast<float>(dt_bias[h]);
    const float sp = fmaxf(gate_in, 0.f) + log1pf(expf(-fabsf(gate_in)));  // softplus, as logaddexp(x, 0)
    const float decay = expf(-expf(static_cast<float>(A_log[h])) * sp);
    const float beta = 1.f / (1.f + expf(-static_cast<float>(b[row * b_strides[0] + h * b_strides[2]])));
    const auto* s_in = state + row * state_strides[0] + h * state_strides[1] + j * state_strides[2];
    float s[PER], predicted = 0.f;
    #pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int d = lane + 32 * i;
        s[i] = d < Dk ? s_in[d * state_strides[3]] * decay : 0.f;
        predicted += s[i] * kv[i];
    }
    for (int o = 16; o > 0; o >>= 1) predicted += __shfl_xor_sync(0xffffffff, predicted, o);
    const float v_j = static_cast<float>(mixed_row[(2 * Hk * Dk + h * Dv + j) * ms]);
    const float delta = beta * (v_j - predicted * k_scale) * k_scale;
    float* s_out = state_out + ((size_t)n * Dv + j) * Dk;
    float y_j = 0.f;
    #pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int d = lane + 32 * i;
        s[i] += delta * kv[i];
        if (d < Dk) s_out[d] = s[i];
        y_j += s[i] * qv[i];
    }
    for (int o = 16; o > 0; o >>= 1) y_j += __shfl_xor_sync(0xffffffff, y_j, o);
    if (lane == 0) y[(size_t)n * Dv + j] = static_cast<T>(y_j * q_scale);
"""


def conv_step(x: mx.array, weight: mx.array, conv_state: mx.array) -> tuple[mx.array, mx.array]:
    """gated_delta.causal_conv for one token per row: x [B, 1, C], weight [C, K], conv_state [B, K-1, C] ->
    (SiLU of the conv [B, 1, C], the new conv state [B, K-1, C]), both in x's dtype; the sum in float32."""
    batch, _, channels = x.shape
    taps = weight.shape[1]
    kernel = cuda_jit.kernel("mlxd_conv_step", ["x", "weight", "state"], ["out", "new_state"], _CONV_STEP)
    out, new_state = kernel(
        inputs=[x, weight, conv_state],
        template=[("T", x.dtype), ("K", taps), ("C", channels)],
        grid=(channels, batch, 1), threadgroup=(min(256, channels), 1, 1),
        output_shapes=[(batch, 1, channels), (batch, taps - 1, channels)], output_dtypes=[x.dtype, x.dtype])
    return out, new_state


def gated_delta_step(mixed: mx.array, a: mx.array, b: mx.array, A_log: mx.array, dt_bias: mx.array,
                     state: mx.array, heads: DeltaHeads) -> tuple[mx.array, mx.array]:
    """One token of the gated delta rule per row, from the conv's output mixed [B, 1, 2*hk*dk + hv*dv] (q | k | v,
    not yet normalized), the gate inputs a, b [B, 1, hv], the layer's A_log and dt_bias [hv] and the float32
    state [B, hv, dv, dk]: (the outputs [B, 1, hv, dv] in mixed's dtype, the new state). The same math as
    GatedDeltaNet's MLX ops: q and k l2-normalized (q scaled by dk^-1/2), decay exp(-exp(A_log) softplus(a +
    dt_bias)), beta sigmoid(b), then gated_delta.recurrent_gated_delta."""
    batch = mixed.shape[0]
    kernel = cuda_jit.kernel("mlxd_gated_delta_step", ["mixed", "a", "b", "A_log", "dt_bias", "state"],
                             ["y", "state_out"], _GATED_DELTA_STEP)
    y, new_state = kernel(
        inputs=[mixed, a, b, A_log, dt_bias, state],
        template=[("T", mixed.dtype), ("Hk", heads.hk), ("Hv", heads.hv), ("Dk", heads.dk), ("Dv", heads.dv),
                  ("Tiled", heads.tiled)],
        grid=(32, heads.dv, batch * heads.hv), threadgroup=(32, 4, 1),
        output_shapes=[(batch, 1, heads.hv, heads.dv), state.shape], output_dtypes=[mixed.dtype, mx.float32])
    return y, new_state

