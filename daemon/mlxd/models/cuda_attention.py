"""Masked one-query decode attention as one CUDA kernel, for models/ops_cuda.py: a batched decode step's rows of
different lengths (an array mask), sliding windows, attention sinks, and MLA's latent attention (a second query and
key part, values read as the keys). MLX's fused kernel takes no mask on CUDA; its ops cost ~5 graph nodes a
layer (ops_mlx.grouped_attention, the reference)."""

from __future__ import annotations

import mlx.core as mx

from mlxd.models import cuda_jit

# One block per (row, kv head, split of the keys): its W warps split the split's keys (warp w takes keys w, w + W,
# ...), the 32 lanes of a warp split the head dimension, and each warp keeps a running softmax (max, sum, weighted
# values) for the G query heads that share the kv head; the warps' partial results are merged through shared memory
# at the end (_FINISH: the output; with S splits, _PARTIAL: each split's sum, max and total, which _MERGE joins).
_ATTEND = """
    constexpr int PD = D / 32, PV = DV / 32, P2 = D2 / 32, P2A = P2 > 0 ? P2 : 1;
    const float NEG_INF = __int_as_float(0xff800000);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int split = blockIdx.x % S, row = blockIdx.x / S / HKV, kvh = blockIdx.x / S % HKV;
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
        // The sink joins the softmax once: warp 0 of split 0 starts from it, the others from nothing.
        if (HAS_SINKS && warp == 0 && split == 0) { m[g] = static_cast<float>(sinks[kvh * G + g]); l[g] = 1.f; }
        else { m[g] = NEG_INF; l[g] = 0.f; }
    }
    const auto* kb = k + row * k_strides[0] + kvh * k_strides[1];
    const auto* vb = v + row * v_strides[0] + kvh * v_strides[1];
    const auto* k2b = k2 + row * k2_strides[0] + kvh * k2_strides[1];
    const int keys = k_shape[2], per = (keys + S - 1) / S, end = min(keys, (split + 1) * per);
    for (int t = split * per + warp; t < end; t += W) {
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
    __shared__ float merged[W * G * (DV + 2)];  // static: MLX's cuda_kernel takes no dynamic size
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
        const size_t at = (size_t)row * HKV * G + kvh * G + g;  // the query head's place in [B, Hq]
"""
_FINISH = """
        out[at * DV + d] = static_cast<T>(value / total);
    }
"""
# A split's values still weighted by exp(score - its max), with that max and its total weight: [B, Hq, S, DV] and
# [B, Hq, S, 2], float32. A split whose keys are all masked leaves max -inf and total 0, which _MERGE weighs as 0.
_PARTIAL = """
        parts[(at * S + split) * DV + d] = value;
        if (d == 0) { stats[(at * S + split) * 2] = top; stats[(at * S + split) * 2 + 1] = total; }
    }
"""
_DECODE_ATTENTION = _ATTEND + _FINISH
_DECODE_ATTENTION_SPLIT = _ATTEND + _PARTIAL

# The splits of each query head joined: one thread per (row, head, value dimension).
_MERGE = """
    const float NEG_INF = __int_as_float(0xff800000);
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)parts_shape[0] * parts_shape[1] * DV) return;
    const size_t at = i / DV, d = i % DV;
    float top = NEG_INF;
    for (int s = 0; s < S; ++s) top = fmaxf(top, stats[(at * S + s) * 2]);
    float total = 0.f, value = 0.f;
    for (int s = 0; s < S; ++s) {
        const float m = stats[(at * S + s) * 2];
        const float f = m == NEG_INF ? 0.f : expf(m - top);
        total += stats[(at * S + s) * 2 + 1] * f;
        value += parts[(at * S + s) * DV + d] * f;
    }
    out[i] = static_cast<T>(value / total);
"""

# Registers per lane for the G heads' query and values (G * (D + DV) / 32 floats), and the merge's shared memory:
# beyond these, the kernel would spill or not launch, and MLX's ops take the step.
_MAX_LANE_FLOATS = 96
# Up to _MAX_KEYS keys a block per (row, kv head) walks all of them with its W warps (measured at contexts of a few
# hundred tokens: exact on an H200, GLM-4.7-Flash's 16 streams faster over gRPC). Beyond, a few dozen blocks walking
# thousands of keys each would leave most of the device idle: with SPLIT_KEYS the keys split over S blocks of about
# _KEYS_PER_SPLIT each (flash-decoding), a second kernel joining the splits; without, MLX's ops take the step (GLM's
# decode after 2,048-token prompts ran 0.78-0.89x mlx-lm's there, session 19). Off until `gpu_steps.sh
# split-keys:glm-4.7-flash` (its CUDA tests, then long prompts with it and without) has run on a GPU.
_MAX_KEYS = 1024
SPLIT_KEYS = False
_KEYS_PER_SPLIT = 512
_MAX_SPLITS = 64
_SHARED_BYTES = 48 * 1024
_WARPS = 8


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
    splits = _splits(keys_length)
    if (length != 1 or splits is None or dims % 32 or value_dims % 32 or second % 32 or heads % kv_heads
            or group * (dims + second + value_dims) // 32 > _MAX_LANE_FLOATS):
        return None
    warps = min(_WARPS, _SHARED_BYTES // (4 * group * (value_dims + 2)))
    if warps < 1:
        return None
    if mask is not None:
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2] != 1:
            return None  # a mask per head or per query: not what a decode step's batch cache makes
        mask = mx.broadcast_to(mask, (batch, 1, 1, keys_length))
    unused = cuda_jit.scalar(scale)  # stands for an input the template switches off
    if splits == 1:
        name, source, outputs = "mlxd_decode_attention", _DECODE_ATTENTION, ["out"]
        shapes, dtypes = [(batch, heads, 1, value_dims)], [queries.dtype]
    else:  # each split's weighted values and (max, total), joined by _MERGE below
        name, source, outputs = "mlxd_decode_attention_split", _DECODE_ATTENTION_SPLIT, ["parts", "stats"]
        shapes, dtypes = [(batch, heads, splits, value_dims), (batch, heads, splits, 2)], [mx.float32] * 2
    kernel = cuda_jit.kernel(name, ["q", "k", "v", "scale", "mask", "sinks", "q2", "k2"], outputs, source)
    made = kernel(
        inputs=[queries, keys, values, cuda_jit.scalar(scale), unused if mask is None else mask,
                unused if sinks is None else sinks, queries2 if second else unused, keys2 if second else unused],
        template=[("T", queries.dtype), ("D", dims), ("DV", value_dims), ("D2", second),
                  ("V_IS_K", values is keys and value_dims == dims), ("G", group), ("HKV", kv_heads),
                  ("W", warps), ("S", splits), ("HAS_MASK", mask is not None),
                  ("MASK_BOOL", mask is not None and mask.dtype == mx.bool_), ("HAS_SINKS", sinks is not None)],
        grid=(32 * warps * batch * kv_heads * splits, 1, 1), threadgroup=(32 * warps, 1, 1),
        output_shapes=shapes, output_dtypes=dtypes)
    if splits == 1:
        return made[0]
    merge = cuda_jit.kernel("mlxd_decode_attention_merge", ["parts", "stats"], ["out"], _MERGE)
    (out,) = merge(inputs=made, template=[("T", queries.dtype), ("DV", value_dims), ("S", splits)],
                   grid=(batch * heads * value_dims, 1, 1), threadgroup=(256, 1, 1),
                   output_shapes=[(batch, heads, 1, value_dims)], output_dtypes=[queries.dtype])
    return out


def _splits(keys: int) -> int | None:
    """How many blocks share a kv head's keys: 1 up to _MAX_KEYS, then (SPLIT_KEYS) a power of two giving each about
    _KEYS_PER_SPLIT, at most _MAX_SPLITS; None where the kernel does not take that many (MLX's ops then)."""
    if 0 < keys <= _MAX_KEYS:
        return 1
    if not SPLIT_KEYS or keys <= 0:
        return None
    splits = 2
    while splits < _MAX_SPLITS and splits * _KEYS_PER_SPLIT < keys:
        splits *= 2
    return splits

