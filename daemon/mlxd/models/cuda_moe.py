"""A MoE layer's routing (top-k and softmax, or sigmoid with a bias) and combining (the weighted sum of the
experts' outputs) as one CUDA kernel each, for models/ops_cuda.py; MLX's ops (ops_mlx.MLXBackend.route_experts,
route_sigmoid, combine_experts) are the reference: 3, 4 and 2 graph nodes a layer (3 with the shared experts'
output added, which the combining kernel adds in its pass)."""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from mlxd.models import cuda_jit

# Both routing kernels: a warp per token, its lanes holding the token's E logits PE apiece (lane + 32 i).
_TOKEN_WARP = """
    constexpr int PE = (E + 31) / 32;
    const float NEG_INF = __int_as_float(0xff800000);
    const int lane = threadIdx.x % 32;
    const int token = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (token >= logits_shape[0]) return;  // a whole warp shares its token
    const auto* row = logits + token * logits_strides[0];
"""

# One warp per token: its lanes hold the router logits E/32 apiece; k rounds of a warp-wide argmax pick the experts
# (the lowest index on a tie), then a float32 softmax weighs them: over the k kept logits (`RENORM`: the softmax
# over all experts renormalized over the kept ones, which is the same numbers) or over all E.
_ROUTE = _TOKEN_WARP + """
    float x[PE];
    #pragma unroll
    for (int i = 0; i < PE; ++i)
        x[i] = lane + 32 * i < E ? static_cast<float>(row[(lane + 32 * i) * logits_strides[1]]) : NEG_INF;
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

# Sigmoid routing (GLM-4.7-Flash's and Nemotron-H's, ops_mlx.MLXBackend.route_sigmoid), one warp per token as in
# _ROUTE: each score s = sigmoid(logit) in float32, the choice s + bias; k rounds of a warp-wide argmax of the choice
# (the lowest index on a tie) keep each pick's s; the weights are those s over their sum (`NORM`) times scale[0].
_ROUTE_SIGMOID = _TOKEN_WARP + """
    float s[PE], c[PE];
    #pragma unroll
    for (int i = 0; i < PE; ++i) {
        const int e = lane + 32 * i;
        s[i] = e < E ? 1.f / (1.f + expf(-static_cast<float>(row[e * logits_strides[1]]))) : 0.f;
        c[i] = e < E ? s[i] + static_cast<float>(bias[e * bias_strides[0]]) : NEG_INF;
    }
    float kept[K];
    int chosen[K];
    #pragma unroll
    for (int j = 0; j < K; ++j) {
        float best = NEG_INF, score = 0.f;
        int at = E;
        #pragma unroll
        for (int i = 0; i < PE; ++i) {
            const int e = lane + 32 * i;
            if (c[i] > best || (c[i] == best && e < at)) { best = c[i]; at = e; score = s[i]; }
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float b2 = __shfl_xor_sync(0xffffffff, best, o);
            const int a2 = __shfl_xor_sync(0xffffffff, at, o);
            const float s2 = __shfl_xor_sync(0xffffffff, score, o);
            if (b2 > best || (b2 == best && a2 < at)) { best = b2; at = a2; score = s2; }
        }
        kept[j] = score;
        chosen[j] = at;
        #pragma unroll
        for (int i = 0; i < PE; ++i) if (lane + 32 * i == at) c[i] = NEG_INF;
    }
    float total = 0.f;
    #pragma unroll
    for (int j = 0; j < K; ++j) total += kept[j];
    if (lane < K) {
        float mine = kept[0];
        int expert = chosen[0];
        #pragma unroll
        for (int j = 1; j < K; ++j) if (j == lane) { mine = kept[j]; expert = chosen[j]; }
        indices[(size_t)token * K + lane] = static_cast<uint32_t>(expert);
        weights[(size_t)token * K + lane] = static_cast<TW>((NORM ? mine / (total + 1e-20f) : mine) * scale[0]);
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
        sum += static_cast<float>(y[token * y_strides[0] + j * y_strides[1] + d * y_strides[2]])
               * static_cast<float>(w[token * w_strides[0] + j * w_strides[1]]);
    if (PLUS) sum = static_cast<float>(static_cast<T>(sum))
                    + static_cast<float>(plus[token * plus_strides[0] + d * plus_strides[1]]);
    out[i] = static_cast<T>(sum);
"""


def route_experts(logits: mx.array, top_k: int, renormalize: bool) -> tuple[mx.array, mx.array] | None:
    """moe.route in one kernel: logits [..., E] -> (the k experts [..., k] uint32, best first; their weights in the
    logits' dtype). None for more than 1,024 experts or k above 32 (MLX's ops then)."""
    experts = logits.shape[-1]
    if not _routes(experts, top_k):
        return None
    template = [("T", logits.dtype), ("E", experts), ("K", top_k), ("RENORM", renormalize)]
    return _route("mlxd_route", _ROUTE, logits, {}, template, top_k, logits.dtype)


def route_sigmoid(logits: mx.array, bias: mx.array, top_k: int, normalize: bool, scaling: float,
                  weights_dtype: mx.Dtype = mx.float32) -> tuple[mx.array, mx.array] | None:
    """MLXBackend.route_sigmoid without dropped groups, in one kernel: float32 logits [..., E] and bias [E] -> (the k
    experts [..., k] uint32, best first; their weights, computed in float32, in `weights_dtype`). None for more than
    1,024 experts, k above 32 or logits of another dtype (MLX's ops then)."""
    experts = logits.shape[-1]
    if not _routes(experts, top_k) or logits.dtype != mx.float32 or bias.dtype != mx.float32:
        return None
    template = [("TW", weights_dtype), ("E", experts), ("K", top_k), ("NORM", normalize)]
    others = {"bias": bias, "scale": cuda_jit.scalar(scaling)}
    return _route("mlxd_route_sigmoid", _ROUTE_SIGMOID, logits, others, template, top_k, weights_dtype)


def _routes(experts: int, top_k: int) -> bool:
    """Whether a routing kernel takes these sizes: a warp's lanes hold at most 32 logits each, and k at most 32."""
    return experts <= 1024 and 0 < top_k <= min(32, experts)


def _route(name: str, source: str, logits: mx.array, others: dict[str, mx.array], template: list[tuple[str, Any]],
           top_k: int, weights_dtype: mx.Dtype) -> tuple[mx.array, mx.array]:
    """A routing kernel (_TOKEN_WARP: a warp per token) over logits [..., E] and `others` -> (indices, weights),
    [..., top_k] each."""
    experts = logits.shape[-1]
    tokens = logits.size // experts
    kernel = cuda_jit.kernel(name, ["logits", *others], ["indices", "weights"], source)
    indices, weights = kernel(  # the token count is read from the shape: one compilation for every batch
        inputs=[logits.reshape(tokens, experts), *others.values()],
        template=template,
        grid=(32 * tokens, 1, 1), threadgroup=(128, 1, 1),
        output_shapes=[(*logits.shape[:-1], top_k)] * 2, output_dtypes=[mx.uint32, weights_dtype])
    return indices, weights


def combine_experts(y: mx.array, weights: mx.array, plus: mx.array | None = None) -> mx.array:
    """(y * weights[..., None]).sum(-2) (+ plus) in one kernel: y [..., k, D], weights [..., k] (and plus [..., D],
    y's dtype) -> [..., D] in y's dtype, summed in float32, then rounded, then plus added as MLX adds two arrays of
    y's dtype (so the same values as the sum and an add apart)."""
    top_k, dims = y.shape[-2:]
    tokens = y.size // (top_k * dims)
    kernel = cuda_jit.kernel("mlxd_combine", ["y", "w", "plus"], ["out"], _COMBINE)
    (out,) = kernel(
        inputs=[y.reshape(tokens, top_k, dims), weights.reshape(tokens, top_k),
                cuda_jit.scalar(0.0) if plus is None else plus.reshape(tokens, dims)],
        template=[("T", y.dtype), ("K", top_k), ("D", dims), ("PLUS", plus is not None)],
        grid=(tokens * dims, 1, 1), threadgroup=(256, 1, 1),
        output_shapes=[(*y.shape[:-2], dims)], output_dtypes=[y.dtype])
    return out

