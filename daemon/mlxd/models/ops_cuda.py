"""The CUDA backend of models/ops.py: MLX's ops (MLXBackend) plus kernels of our own where MLX's ops cost a
batched decode step too many kernel launches.

A decode step on a GPU is bound by host work per graph node (docs/performance.md): MLX encodes each node into a
CUDA graph on the host, ~5 us apiece. A Gated DeltaNet layer's decode step in MLX ops is ~55 nodes (the causal conv
over a window, the q/k normalization, the decay and the gate, the delta rule's matmuls and updates, their dtype
casts); mlx-lm has a fused kernel for it on Metal only and runs the same ops on CUDA. Here it is two kernels:
`conv_step` (the conv over the kept inputs and this token, SiLU, the new conv state) and `gated_delta_step` (the
normalization, decay, gate and the recurrence, reading the state once and writing it once). The MLX ops in
models/gated_delta.py stay the reference, and what the CPU and the other GPUs run; tests/models/
test_gated_delta_cuda.py holds the two together on a CUDA device.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from mlxd.models.base import DeltaHeads, Mask
from mlxd.models.ops_mlx import MLXBackend

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

# One block per (row, kv head): its W warps split the keys (warp w takes keys w, w + W, ...), the 32 lanes of a warp
# split the head dimension, and each warp keeps a running softmax (max, sum, weighted values) for the G query heads
# that share the kv head; the warps' partial results are merged through shared memory at the end.
_DECODE_ATTENTION = """
    constexpr int PD = D / 32, PV = DV / 32, P2 = D2 / 32, P2A = P2 > 0 ? P2 : 1;
    const float NEG_INF = __int_as_float(0xff800000);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int row = blockIdx.x / HKV, kvh = blockIdx.x % HKV;
    const float sc = scale[0];
    float qv[G][PD], q2v[G][P2A], acc[G][PV], m[G], l[G];
    #pragma unroll
    for (int g = 0; g < G; ++g) {
        const auto* qg = q + row * q_strides[0] + (kvh * G + g) * q_strides[1];
        #pragma unroll
        for (int i = 0; i < PD; ++i) qv[g][i] = static_cast<float>(qg[(lane + 32 * i) * q_strides[3]]) * sc;
        const auto* q2g = q2 + row * q2_strides[0] + (kvh * G + g) * q2_strides[1];
        #pragma unroll
        for (int i = 0; i < P2; ++i) q2v[g][i] = static_cast<float>(q2g[(lane + 32 * i) * q2_strides[3]]) * sc;
        #pragma unroll
        for (int i = 0; i < PV; ++i) acc[g][i] = 0.f;
        // The sink joins the softmax once: warp 0 starts from it, the others from nothing.
        if (HAS_SINKS && warp == 0) { m[g] = static_cast<float>(sinks[kvh * G + g]); l[g] = 1.f; }
        else { m[g] = NEG_INF; l[g] = 0.f; }
    }
    const auto* kb = k + row * k_strides[0] + kvh * k_strides[1];
    const auto* vb = v + row * v_strides[0] + kvh * v_strides[1];
    const auto* k2b = k2 + row * k2_strides[0] + kvh * k2_strides[1];
    const int keys = k_shape[2];
    for (int t = warp; t < keys; t += W) {
        float bias = 0.f;
        if (HAS_MASK) {
            const float mv = static_cast<float>(mask[row * mask_strides[0] + t * mask_strides[3]]);
            if (MASK_BOOL) { if (mv == 0.f) continue; }
            else { bias = mv; if (bias == NEG_INF) continue; }
        }
        float kt[PD], k2t[P2A], vt[PV];
        #pragma unroll
        for (int i = 0; i < PD; ++i) kt[i] = static_cast<float>(kb[t * k_strides[2] + (lane + 32 * i) * k_strides[3]]);
        #pragma unroll
        for (int i = 0; i < P2; ++i)
            k2t[i] = static_cast<float>(k2b[t * k2_strides[2] + (lane + 32 * i) * k2_strides[3]]);
        #pragma unroll
        for (int i = 0; i < PV; ++i)  // MLA: the values are the keys' first part (the latent), read once
            vt[i] = V_IS_K ? kt[i] : static_cast<float>(vb[t * v_strides[2] + (lane + 32 * i) * v_strides[3]]);
        #pragma unroll
        for (int g = 0; g < G; ++g) {
            float s = 0.f;
            #pragma unroll
            for (int i = 0; i < PD; ++i) s += qv[g][i] * kt[i];
            #pragma unroll
            for (int i = 0; i < P2; ++i) s += q2v[g][i] * k2t[i];
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
            s += bias;
            const float m_new = fmaxf(m[g], s);
            const float old = expf(m[g] - m_new), p = expf(s - m_new);
            l[g] = l[g] * old + p;
            #pragma unroll
            for (int i = 0; i < PV; ++i) acc[g][i] = acc[g][i] * old + p * vt[i];
            m[g] = m_new;
        }
    }
    // Merge the warps: each writes its running max, sum and values; then thread j finishes (head, dim) pairs.
    extern __shared__ float merged[];
    float* ms = merged;                 // [W][G]
    float* ls = ms + W * G;             // [W][G]
    float* os = ls + W * G;             // [W][G][DV]
    #pragma unroll
    for (int g = 0; g < G; ++g) {
        if (lane == 0) { ms[warp * G + g] = m[g]; ls[warp * G + g] = l[g]; }
        #pragma unroll
        for (int i = 0; i < PV; ++i) os[(warp * G + g) * DV + lane + 32 * i] = acc[g][i];
    }
    __syncthreads();
    for (int j = threadIdx.x; j < G * DV; j += 32 * W) {
        const int g = j / DV, d = j % DV;
        float top = NEG_INF;
        for (int w = 0; w < W; ++w) top = fmaxf(top, ms[w * G + g]);
        float total = 0.f, value = 0.f;
        for (int w = 0; w < W; ++w) {
            const float f = ms[w * G + g] == NEG_INF ? 0.f : expf(ms[w * G + g] - top);
            total += ls[w * G + g] * f;
            value += os[(w * G + g) * DV + d] * f;
        }
        out[((size_t)row * HKV * G + kvh * G + g) * DV + d] = static_cast<T>(value / total);
    }
"""

# One warp per token: its lanes hold the router logits E/32 apiece; k rounds of a warp-wide argmax pick the experts
# (the lowest index on a tie), then a float32 softmax weighs them: over the k kept logits (`RENORM`: the softmax
# over all experts renormalized over the kept ones, which is the same numbers) or over all E.
_ROUTE = """
    constexpr int PE = (E + 31) / 32;
    const float NEG_INF = __int_as_float(0xff800000);
    const int lane = threadIdx.x % 32;
    const int token = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (token >= logits_shape[0]) return;  // a whole warp shares its token
    const auto* row = logits + (size_t)token * E;
    float x[PE];
    #pragma unroll
    for (int i = 0; i < PE; ++i) x[i] = lane + 32 * i < E ? static_cast<float>(row[lane + 32 * i]) : NEG_INF;
    float top = NEG_INF, total = 0.f;
    if (!RENORM) {
        #pragma unroll
        for (int i = 0; i < PE; ++i) top = fmaxf(top, x[i]);
        for (int o = 16; o > 0; o >>= 1) top = fmaxf(top, __shfl_xor_sync(0xffffffff, top, o));
        #pragma unroll
        for (int i = 0; i < PE; ++i) total += x[i] == NEG_INF ? 0.f : expf(x[i] - top);
        for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffff, total, o);
    }
    float kept[K];
    int chosen[K];
    #pragma unroll
    for (int j = 0; j < K; ++j) {
        float best = NEG_INF;
        int at = E;
        #pragma unroll
        for (int i = 0; i < PE; ++i) {
            const int e = lane + 32 * i;
            if (x[i] > best || (x[i] == best && e < at)) { best = x[i]; at = e; }
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float b2 = __shfl_xor_sync(0xffffffff, best, o);
            const int a2 = __shfl_xor_sync(0xffffffff, at, o);
            if (b2 > best || (b2 == best && a2 < at)) { best = b2; at = a2; }
        }
        kept[j] = best;
        chosen[j] = at;
        #pragma unroll
        for (int i = 0; i < PE; ++i) if (lane + 32 * i == at) x[i] = NEG_INF;
    }
    if (RENORM) {
        top = kept[0];
        #pragma unroll
        for (int j = 0; j < K; ++j) total += expf(kept[j] - top);
    }
    if (lane < K) {
        float mine = kept[0];
        int expert = chosen[0];
        #pragma unroll
        for (int j = 1; j < K; ++j) if (j == lane) { mine = kept[j]; expert = chosen[j]; }
        indices[(size_t)token * K + lane] = static_cast<uint32_t>(expert);
        weights[(size_t)token * K + lane] = static_cast<T>(expf(mine - top) / total);
    }
"""

# One thread per (token, feature): the k experts' outputs y [N, K, D] summed with their weights [N, K].
_COMBINE = """
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)y_shape[0] * D) return;
    const size_t token = i / D, d = i % D;
    float sum = 0.f;
    #pragma unroll
    for (int j = 0; j < K; ++j)
        sum += static_cast<float>(y[(token * K + j) * D + d]) * static_cast<float>(w[token * K + j]);
    out[i] = static_cast<T>(sum);
"""

# Registers per lane for the G heads' query and values (G * (D + DV) / 32 floats), and the merge's shared memory:
# beyond these, the kernel would spill or not launch, and MLX's ops take the step.
_MAX_LANE_FLOATS = 96
_SHARED_BYTES = 48 * 1024
_WARPS = 8

_kernels: dict[str, Any] = {}
_scales: dict[float, mx.array] = {}


def _kernel(name: str, inputs: list[str], outputs: list[str], source: str) -> Any:
    """The custom kernel `name`, made once (MLX compiles it with NVRTC on first use, per template)."""
    if name not in _kernels:
        _kernels[name] = mx.fast.cuda_kernel(name=name, input_names=inputs, output_names=outputs, source=source,
                                             ensure_row_contiguous=False)
    return _kernels[name]


def conv_step(x: mx.array, weight: mx.array, conv_state: mx.array) -> tuple[mx.array, mx.array]:
    """gated_delta.causal_conv for one token per row: x [B, 1, C], weight [C, K], conv_state [B, K-1, C] ->
    (SiLU of the conv [B, 1, C], the new conv state [B, K-1, C]), both in x's dtype; the sum in float32."""
    batch, _, channels = x.shape
    taps = weight.shape[1]
    kernel = _kernel("mlxd_conv_step", ["x", "weight", "state"], ["out", "new_state"], _CONV_STEP)
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
    kernel = _kernel("mlxd_gated_delta_step", ["mixed", "a", "b", "A_log", "dt_bias", "state"], ["y", "state_out"],
                     _GATED_DELTA_STEP)
    y, new_state = kernel(
        inputs=[mixed, a, b, A_log, dt_bias, state],
        template=[("T", mixed.dtype), ("Hk", heads.hk), ("Hv", heads.hv), ("Dk", heads.dk), ("Dv", heads.dv),
                  ("Tiled", heads.tiled)],
        grid=(32, heads.dv, batch * heads.hv), threadgroup=(32, 4, 1),
        output_shapes=[(batch, 1, heads.hv, heads.dv), state.shape], output_dtypes=[mixed.dtype, mx.float32])
    return y, new_state


def decode_attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask: mx.array | None,
                     sinks: mx.array | None, queries2: mx.array | None = None,
                     keys2: mx.array | None = None) -> mx.array | None:
    """softmax(scale q k^T + mask) v for one query per row, queries [B, Hq, 1, D] against keys [B, Hkv, T, D] and
    values [B, Hkv, T, Dv] (slices of a cache: any strides), mask None or an additive or boolean array that
    broadcasts against [B, 1, 1, T], `sinks` [Hq] as in ops.attention: [B, Hq, 1, Dv] in the queries' dtype, with
    float32 scores and sums. With `queries2` [B, Hq, 1, D2] and `keys2` [B, Hkv, T, D2], a score is q.k + q2.k2
    (MLA's latent and rope parts); `values` may be `keys` itself (MLA's latent), then read once. None where the
    shapes do not suit it (the caller then runs MLX's ops)."""
    batch, heads, length, dims = queries.shape
    kv_heads, keys_length, value_dims = keys.shape[1], keys.shape[2], values.shape[-1]
    second = 0 if queries2 is None or keys2 is None else queries2.shape[-1]
    group = heads // kv_heads
    if (length != 1 or dims % 32 or value_dims % 32 or second % 32 or heads % kv_heads or keys_length == 0
            or group * (dims + second + value_dims) // 32 > _MAX_LANE_FLOATS):
        return None
    warps = min(_WARPS, _SHARED_BYTES // (4 * group * (value_dims + 2)))
    if warps < 1:
        return None
    if mask is not None:
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2] != 1:
            return None  # a mask per head or per query: not what a decode step's batch cache makes
        mask = mx.broadcast_to(mask, (batch, 1, 1, keys_length))
    if scale not in _scales:
        _scales[scale] = mx.array([scale], mx.float32)
    unused = _scales[scale]  # stands for an input the template switches off
    kernel = _kernel("mlxd_decode_attention", ["q", "k", "v", "scale", "mask", "sinks", "q2", "k2"], ["out"],
                     _DECODE_ATTENTION)
    (out,) = kernel(
        inputs=[queries, keys, values, _scales[scale], unused if mask is None else mask,
                unused if sinks is None else sinks, queries2 if second else unused, keys2 if second else unused],
        template=[("T", queries.dtype), ("D", dims), ("DV", value_dims), ("D2", second),
                  ("V_IS_K", values is keys and value_dims == dims), ("G", group), ("HKV", kv_heads),
                  ("W", warps), ("HAS_MASK", mask is not None),
                  ("MASK_BOOL", mask is not None and mask.dtype == mx.bool_), ("HAS_SINKS", sinks is not None)],
        grid=(32 * warps * batch * kv_heads, 1, 1), threadgroup=(32 * warps, 1, 1),
        output_shapes=[(batch, heads, 1, value_dims)], output_dtypes=[queries.dtype],
        shared_memory=4 * warps * group * (value_dims + 2))
    return out


def route_experts(logits: mx.array, top_k: int, renormalize: bool) -> tuple[mx.array, mx.array] | None:
    """moe.route in one kernel: logits [..., E] -> (the k experts [..., k] uint32, best first; their weights in the
    logits' dtype). None for more than 1,024 experts or k above 32 (MLX's ops then)."""
    experts = logits.shape[-1]
    if experts > 1024 or not 0 < top_k <= min(32, experts):
        return None
    tokens = logits.size // experts
    kernel = _kernel("mlxd_route", ["logits"], ["indices", "weights"], _ROUTE)
    indices, weights = kernel(  # the token count is read from the shape: one compilation for every batch
        inputs=[mx.contiguous(logits.reshape(tokens, experts))],
        template=[("T", logits.dtype), ("E", experts), ("K", top_k), ("RENORM", renormalize)],
        grid=(32 * tokens, 1, 1), threadgroup=(128, 1, 1),
        output_shapes=[(*logits.shape[:-1], top_k)] * 2, output_dtypes=[mx.uint32, logits.dtype])
    return indices, weights


def combine_experts(y: mx.array, weights: mx.array) -> mx.array:
    """(y * weights[..., None]).sum(-2) in one kernel: y [..., k, D], weights [..., k] -> [..., D] in y's dtype,
    summed in float32."""
    top_k, dims = y.shape[-2:]
    tokens = y.size // (top_k * dims)
    kernel = _kernel("mlxd_combine", ["y", "w"], ["out"], _COMBINE)
    (out,) = kernel(
        inputs=[mx.contiguous(y.reshape(tokens, top_k, dims)), mx.contiguous(weights.reshape(tokens, top_k))],
        template=[("T", y.dtype), ("K", top_k), ("D", dims)],
        grid=(tokens * dims, 1, 1), threadgroup=(256, 1, 1),
        output_shapes=[(*y.shape[:-2], dims)], output_dtypes=[y.dtype])
    return out


class CudaBackend(MLXBackend):
    name = "cuda"

    def latent_attention(self, q_latent: mx.array, q_rot: mx.array, latent: mx.array, k_rot: mx.array,
                         scale: float, mask: Mask) -> mx.array:
        if q_latent.shape[2] == 1 and not isinstance(mask, str):
            B, H, _, _ = q_latent.shape
            T = latent.shape[2]
            # Each head a kv head of its own over the same cached latent (a broadcast: nothing is copied).
            keys = mx.broadcast_to(latent, (B, H, T, latent.shape[-1]))
            rope_keys = mx.broadcast_to(k_rot, (B, H, T, k_rot.shape[-1]))
            out = decode_attention(q_latent, keys, keys, scale, mask, None, q_rot, rope_keys)
            if out is not None:
                return out
        return super().latent_attention(q_latent, q_rot, latent, k_rot, scale, mask)

    def route_experts(self, logits: mx.array, top_k: int, renormalize: bool) -> tuple[mx.array, mx.array]:
        routed = route_experts(logits, top_k, renormalize)
        return routed if routed is not None else super().route_experts(logits, top_k, renormalize)

    def combine_experts(self, y: mx.array, weights: mx.array) -> mx.array:
        if y.dtype != weights.dtype:  # the sum then takes the wider dtype (GLM's float32 routing weights)
            return super().combine_experts(y, weights)
        return combine_experts(y, weights)

    def attention(self, queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask: Mask,
                  softcap: float | None = None, sinks: mx.array | None = None) -> mx.array:
        # One query per row with an array mask (a batch of rows of different lengths, or a sliding window): MLX's
        # fused kernel takes no mask on CUDA, and its ops cost ~5 graph nodes a layer; this is one.
        if softcap is None and queries.shape[2] == 1 and isinstance(mask, mx.array):
            out = decode_attention(queries, keys, values, scale, mask, sinks)
            if out is not None:
                return out
        return super().attention(queries, keys, values, scale, mask, softcap, sinks)

    def quantized_matmul(self, x: mx.array, weight: mx.array, scales: mx.array, biases: mx.array | None,
                         transpose: bool, group_size: int, bits: int, mode: str) -> mx.array:
        if transpose:
            return super().quantized_matmul(x, weight, scales, biases, transpose, group_size, bits, mode)
        # MLX 0.32.4 on CUDA: "[quantized_matmul] No implementation for problem shape ... transpose: false".
        return x @ mx.dequantize(weight, scales, biases, group_size, bits, mode=mode).astype(x.dtype)

    def gated_delta_decode(self, qkv: mx.array, a: mx.array, b: mx.array, conv_weight: mx.array,
                           conv_state: mx.array, A_log: mx.array, dt_bias: mx.array, state: mx.array,
                           heads: DeltaHeads) -> tuple[mx.array, mx.array, mx.array] | None:
        if state.dtype != mx.float32:
            return None
        mixed, conv_state = conv_step(qkv, conv_weight, conv_state)
        out, state = gated_delta_step(mixed, a, b, A_log, dt_bias, state, heads)
        return out, conv_state, state
