"""The routed experts' matmuls of a decode-sized MoE step as one CUDA kernel, for models/ops_cuda.py.

MLX 0.32.4's CUDA `gather_qmm` computes every (token, expert) pair as a product of its own (one row, M = 1): at 16
tokens and 8 experts each, Qwen3-30B-A3B's gate/up takes ~172 us where the ~81 distinct experts' weights would
take ~25 us to read once (docs/performance.md, session 16). Here a block takes one expert and 32 of its output
features, lists the pairs routed to that expert (from the indices, in shared memory), and computes them all from
one read of those weights: each warp holds 4 weight rows, so every activation value it loads serves 4 rows, and
works through the pairs 8 (then 4, 2, 1) at a time. Weights: MLX's affine 4 and 8 bits, MXFP4 (E2M1 codes and E8M0
scales, decoded here), or floats. MLX's gathered matmuls stay the reference (tests/models/test_cuda_experts.py)
and what runs where neither kernel of this module measured faster (`kernel_for`), and for long prefill chunks,
sorted by expert. cuda_experts_few.py is the kernel for few pairs per expert (a decode step's).
"""

from __future__ import annotations

import functools

import mlx.core as mx

from mlxd.models import cuda_experts_few, cuda_jit
from mlxd.models.base import ExpertQuantization
from mlxd.models.cuda_experts_code import E2M1_WORD, E8M0_SCALE_X16384, SUM_AND_WRITE

# The most (token, expert) pairs one call takes: each block keeps the list of its expert's pairs in shared memory
# (4 bytes a pair). 256 tokens of 8 experts; larger inputs are prefill chunks, sorted by expert for MLX's kernel.
MAX_PAIRS = 2048

# Weight kinds (the kernel's MODE) and how many input values one 32-bit load of a weight row holds.
_FLOAT, _AFFINE, _MXFP4 = 0, 1, 2

# Which kernel computes how many pairs, from `python -m bench expert_matmul` on the H200 (MLX 0.32.4, bfloat16,
# us per call, MLX / chunked / few, gate/up + down; docs/performance.md, sessions 19-21):
# - affine 4-bit (Qwen3-30B-A3B, 128 experts, top 8): 8 pairs 68.0 / 113 / 59.8, 128 pairs 299 / 324 / 222,
#   512 pairs 1,039 / 710 / 679, 1,024 pairs 2,012 / 1,064 / 984, 2,048 pairs 3,935 / 1,731 / 1,639; GLM-4.7-Flash's
#   shape (64 experts, top 4) at 1,024 pairs 3,883 / 1,567 / 1,544. The few-pairs kernel wins at every size measured.
# - MXFP4 (gpt-oss-20b, 32 experts, top 4), its codes decoded through float16: 4 pairs 66.4 / 117 / 61.4, 64 pairs
#   637 / 537 / 331, 512 pairs 4,667 / 1,856 / 1,546, 1,024 pairs 9,242 / 3,439 / 2,845: the few-pairs kernel to
#   1,024 pairs (the largest measured), the chunked one above.
# - bfloat16 experts (session 21; the same three shapes): the few-pairs kernel from 32 pairs (Qwen3 at 32 pairs
#   120 / 202 / 112; at 512 pairs 1,242 / 889 / 504); below, MLX's is as fast or faster (GLM at 16 pairs 102 / 184
#   / 127). Above 512 pairs, unmeasured: the chunked kernel as before.
# - affine 8-bit: not measured at decode sizes; the chunked kernel from 256 pairs as before.
# Outside these ranges MLX's kernel computes them.
MIN_PAIRS = 256                                                # the chunked kernel from here to MAX_PAIRS
FEW_PAIRS = {(_AFFINE, 4): range(1, MAX_PAIRS + 1), (_MXFP4, 4): range(1, 1025),  # (MODE, BITS) -> the few-pairs
             (_FLOAT, 0): range(32, 513)}                                         # kernel's sizes

# "chunked" or "few": that kernel at every size it can take (its tests; `bench expert_matmul`), else None.
FORCE: str | None = None

# The weight kinds (MODE) whose pairs past MAX_PAIRS (prefill chunks) these kernels compute in slices of the chunk's
# tokens, a call each (each call reads the experts' weights again, as a smaller prefill chunk would), instead of
# MLX's gathered matmul. Session 35, H100, random 4-bit models, TTFT of 2,048-token prompts in-process, without /
# with (bench prefill_chunks, medians of 3): Qwen3-30B-A3B (top 8: 4,096 pairs a 512-token chunk) 1,707 / 813 ms at
# 512 tokens a chunk and 1,653 / 777 at 2,048; Gemma-4-26B-A4B 1,320 / 697 and 1,263 / 637; GLM-4.7-Flash (top 4:
# 2,048 pairs at 512, within MAX_PAIRS) 830 / 786 and 1,609 / 750. Quantized experts only: for bfloat16 ones MLX's
# gathered matmul was as fast or faster than the chunked kernel at 2,048 pairs (session 34, GLM: 297 against 356
# ms), so their long chunks stay with it (`--variant slices:mlxd.models.cuda_experts.SLICES=(0,1,2)` measures it).
SLICES: tuple[int, ...] = (_AFFINE, _MXFP4)


def kernel_for(pairs: int, quant: ExpertQuantization | None) -> str | None:
    """"few", "chunked", or None (MLX's kernel) for this many pairs of weights quantized so."""
    return _kernel_for_kind(pairs, _kind(quant))


def _kernel_for_kind(pairs: int, kind: tuple[int, int, int] | None) -> str | None:
    if kind is None or pairs <= 0 or (pairs > MAX_PAIRS and kind[0] not in SLICES):
        return None
    pairs = min(pairs, MAX_PAIRS)  # in slices of MAX_PAIRS / 2 pairs or more (token_slices): the largest's kernel
    if FORCE is not None:
        return FORCE
    if pairs in FEW_PAIRS.get(kind[:2], ()):
        return "few"
    return "chunked" if pairs >= MIN_PAIRS else None


def takes(pairs: int, quant: ExpertQuantization | None) -> bool:
    """Whether a kernel of this module computes this many pairs (unsorted: each lists its experts' pairs)."""
    return kernel_for(pairs, quant) is not None


# A block's head: which expert and rows are its own, and the list of that expert's pairs.
_HEAD = """
    constexpr int WARPS = 8, RW = 4, TILE = WARPS * RW;
    constexpr int TILES = (OUT + TILE - 1) / TILE;
    constexpr int WORDS = IN / PER;            // loads along a weight row
    __shared__ int pairs[MAXP];
    __shared__ int count;
    const int expert = blockIdx.x / TILES, tile = blockIdx.x % TILES;
    const int n = idx_shape[0];
    if (threadIdx.x == 0) count = 0;
    __syncthreads();
    for (int p = threadIdx.x; p < n; p += blockDim.x)
        if ((int)idx[p] == expert) pairs[atomicAdd(&count, 1)] = p;
    __syncthreads();
    const int m = count;
    if (m == 0) return;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int row0 = tile * TILE + warp * RW;
    int c = 0;
"""

# CH pairs from pair c on, every one real (the body is written out for 8, 4, 2 and 1, so a chunk never computes a
# pair that is not there): the warp's RW rows times each pair's row of x, summed over the lanes, then written.
_CHUNK = """
    {
        float acc[RW][CH];
        #pragma unroll
        for (int r = 0; r < RW; ++r)
            #pragma unroll
            for (int j = 0; j < CH; ++j) acc[r][j] = 0.f;
        const T* xr[CH];
        #pragma unroll
        for (int j = 0; j < CH; ++j) xr[j] = x + (size_t)(pairs[c + j] / DIV) * IN;
        #pragma unroll 2
        for (int word = lane; word < WORDS; word += 32) {
            float xv[CH][PER], xsum[CH];
            #pragma unroll
            for (int j = 0; j < CH; ++j) {
                alignas(16) T xs[PER];  // one vector load where PER values of T fill 8 or 16 bytes
                if constexpr (sizeof(T) * PER % 16 == 0) {
                    #pragma unroll
                    for (int v = 0; v < (int)(sizeof(T) * PER / 16); ++v)
                        reinterpret_cast<uint4*>(xs)[v] = reinterpret_cast<const uint4*>(xr[j] + word * PER)[v];
                } else if constexpr (sizeof(T) * PER == 8) {
                    *reinterpret_cast<uint2*>(xs) = *reinterpret_cast<const uint2*>(xr[j] + word * PER);
                } else {
                    #pragma unroll
                    for (int t = 0; t < PER; ++t) xs[t] = xr[j][word * PER + t];
                }
                xsum[j] = 0.f;
                #pragma unroll
                for (int t = 0; t < PER; ++t) {
                    xv[j][t] = static_cast<float>(xs[t]);
                    if constexpr (MODE == 1) xsum[j] += xv[j][t];
                }
            }
            #pragma unroll
            for (int r = 0; r < RW; ++r) {
                const int row = min(row0 + r, OUT - 1);  // past the last row: the last again (not written)
                const size_t at = (size_t)expert * OUT + row;
                float q[PER];
                float scale = 1.f, bias = 0.f;
                LOAD
                #pragma unroll
                for (int j = 0; j < CH; ++j) {
                    float dot = 0.f;
                    #pragma unroll
                    for (int t = 0; t < PER; ++t) dot += q[t] * xv[j][t];
                    acc[r][j] += MODE == 1 ? scale * dot + bias * xsum[j] : scale * dot;
                }
            }
        }
SUM_AND_WRITE
    }
"""

_CHUNK = _CHUNK.replace("SUM_AND_WRITE\n", SUM_AND_WRITE.lstrip("\n"))
_SOURCE = (_HEAD
           + "    for (; m - c >= 8; c += 8)" + _CHUNK.replace("CH", "8")
           + "".join(f"    if (m - c >= {n})" + _CHUNK.replace("CH", str(n)) + f"    if (m - c >= {n}) c += {n};\n"
                     for n in (4, 2, 1)))


# Row `at`'s values for this load into q[PER], and its group's scale and bias (value = scale * q + bias).
_LOAD_FLOAT = """
                #pragma unroll
                for (int t = 0; t < PER; ++t) q[t] = static_cast<float>(w[at * IN + word * PER + t]);
"""
_LOAD_AFFINE = """
                const uint32_t bits = w[at * WORDS + word];
                #pragma unroll
                for (int t = 0; t < PER; ++t) q[t] = static_cast<float>((bits >> (BITS * t)) & ((1u << BITS) - 1u));
                scale = static_cast<float>(scales[at * (IN / GS) + word * PER / GS]);
                bias = static_cast<float>(biases[at * (IN / GS) + word * PER / GS]);
"""
# MXFP4: E2M1 codes and an E8M0 scale (cuda_experts_code.py; PER is 8, the codes' values come out / 2^14, the scale
# times 2^14).
_LOAD_MXFP4 = """
                const uint32_t bits = w[at * WORDS + word];""" + E2M1_WORD.replace("WORD", "bits") + """
                const uint32_t s = scales[at * (IN / GS) + word * PER / GS];
                scale = E8M0_SCALE_X16384;
"""
INPUTS = {_FLOAT: ["x", "idx", "w"], _AFFINE: ["x", "idx", "w", "scales", "biases"],
           _MXFP4: ["x", "idx", "w", "scales"]}
_LOADS = {_FLOAT: _LOAD_FLOAT, _AFFINE: _LOAD_AFFINE, _MXFP4: _LOAD_MXFP4}


@functools.cache
def kernel_source(mode: int) -> str:
    """The chunked kernel's body for weight kind `mode` (made once: every decode step asks for it)."""
    return _SOURCE.replace("LOAD", _LOADS[mode]).replace("E8M0_SCALE_X16384", E8M0_SCALE_X16384)


def _kind(quant: ExpertQuantization | None) -> tuple[int, int, int] | None:
    """(MODE, BITS, values per 32-bit load) for these weights, or None where the kernel has no decoding."""
    if quant is None:
        return _FLOAT, 0, 8
    if quant.mode == "affine" and quant.bits in (4, 8) and quant.biases is not None:
        return _AFFINE, quant.bits, 32 // quant.bits
    if quant.mode == "mxfp4":
        return _MXFP4, 4, 8
    return None


def gather_matmul(x: mx.array, indices: mx.array, weight: mx.array,
                  quant: ExpertQuantization | None) -> mx.array | None:
    """Each pair's row of x times its expert's matrix, transposed: x [..., 1, in] (one row per pair, or one per
    token broadcast over its k experts: [..., 1, 1, in]), indices [..., k], weight [E, out, in] (packed when
    quantized) -> [..., k, 1, out] in x's dtype, summed in float32. None where neither kernel applies (`kernel_for`,
    other shapes): MLX's gathered matmul then."""
    pairs = indices.size
    kind = _kind(quant)
    if pairs > MAX_PAIRS:
        return _in_slices(x, indices, weight, quant) if kind is not None and kind[0] in SLICES else None
    which = _kernel_for_kind(pairs, kind)
    if which is None or kind is None or x.shape[-2] != 1:
        return None
    mode, bits, per = kind
    experts, out_dims = weight.shape[:2]
    in_dims = x.shape[-1]
    rows = x.size // in_dims
    if rows == pairs:
        div = 1
    elif rows * indices.shape[-1] == pairs and x.ndim >= 3 and x.shape[-3] == 1:
        div = indices.shape[-1]
    else:
        return None
    if in_dims % per or (quant is not None and in_dims % quant.group_size):
        return None
    inputs = [x.reshape(rows, in_dims), indices.reshape(pairs).astype(mx.uint32), weight]
    if quant is not None:
        inputs.append(quant.scales)
        if quant.biases is not None and mode == _AFFINE:
            inputs.append(quant.biases)
    if which == "few":
        return _few(inputs, x, indices, weight, quant, mode, bits, div)
    tiles = -(-out_dims // 32)
    kernel = cuda_jit.kernel(f"mlxd_experts_{mode}", INPUTS[mode], ["out"], kernel_source(mode),
                             row_contiguous=True)
    (out,) = kernel(
        inputs=inputs,
        template=[("T", x.dtype), ("MODE", mode), ("BITS", bits), ("PER", per), ("IN", in_dims), ("OUT", out_dims),
                  ("GS", quant.group_size if quant is not None else 1), ("DIV", div),
                  ("MAXP", MAX_PAIRS)],
        grid=(256 * experts * tiles, 1, 1), threadgroup=(256, 1, 1),
        output_shapes=[(pairs, out_dims)], output_dtypes=[x.dtype])
    return out.reshape(*indices.shape, 1, out_dims)


def token_slices(tokens: int, top_k: int) -> list[int]:
    """The tokens of each slice (SLICES) of `tokens` tokens of `top_k` pairs each: as few slices as keep each one's
    pairs within MAX_PAIRS, as even as can be (so each holds about MAX_PAIRS / 2 pairs or more, which a kernel takes
    for every kind of weights)."""
    most = MAX_PAIRS // top_k
    if most == 0:
        return []
    count = -(-tokens // most)
    size, larger = divmod(tokens, count)
    return [size + 1] * larger + [size] * (count - larger)


def _in_slices(x: mx.array, indices: mx.array, weight: mx.array,
               quant: ExpertQuantization | None) -> mx.array | None:
    """gather_matmul of more than MAX_PAIRS pairs, token slice by token slice (SLICES); None as gather_matmul."""
    top_k = indices.shape[-1]
    tokens = indices.size // top_k
    slices = token_slices(tokens, top_k)
    if not slices or x.ndim < 3 or x.size // (x.shape[-3] * x.shape[-2] * x.shape[-1]) != tokens:
        return None
    xs, ids = x.reshape(tokens, *x.shape[-3:]), indices.reshape(tokens, top_k)
    outs, start = [], 0
    for size in slices:
        out = gather_matmul(xs[start:start + size], ids[start:start + size], weight, quant)
        if out is None:
            return None
        outs.append(out)
        start += size
    return mx.concatenate(outs).reshape(*indices.shape, 1, outs[0].shape[-1])


def _few(inputs: list[mx.array], x: mx.array, indices: mx.array, weight: mx.array,
         quant: ExpertQuantization | None, mode: int, bits: int, div: int) -> mx.array | None:
    """cuda_experts_few.py's kernel, where its 16-byte loads fit the shapes (else None: MLX's kernel)."""
    pairs, (experts, out_dims), in_dims = indices.size, weight.shape[:2], x.shape[-1]
    per_word = 32 // bits if quant is not None else 4 // x.dtype.size
    per_load = 4 * per_word
    if in_dims % per_load or (quant is not None and quant.group_size % per_load) or \
            (quant is None and weight.dtype != x.dtype):
        return None
    by_pair = pairs < experts
    top_k = indices.shape[-1]
    rows_per_warp = cuda_experts_few.ROWS_PER_WARP
    chunk = cuda_experts_few.largest_chunk(pairs // top_k, top_k, experts, rows_per_warp)
    tiles = -(-out_dims // cuda_experts_few.rows_a_block(rows_per_warp))
    kernel = cuda_jit.kernel(f"mlxd_experts_few_{mode}", INPUTS[mode], ["out"], cuda_experts_few.source(mode),
                             row_contiguous=True)
    (out,) = kernel(
        inputs=inputs,
        template=[("T", x.dtype), ("MODE", mode), ("BITS", bits), ("PW", per_word), ("IN", in_dims),
                  ("OUT", out_dims), ("GS", quant.group_size if quant is not None else 1), ("DIV", div),
                  ("MAXP", MAX_PAIRS), ("MAXCH", chunk), ("BY_PAIR", by_pair), ("RW", rows_per_warp),
                  ("AHEAD", cuda_experts_few.LOADS_AHEAD)],
        grid=(256 * (pairs if by_pair else experts) * tiles, 1, 1), threadgroup=(256, 1, 1),
        output_shapes=[(pairs, out_dims)], output_dtypes=[x.dtype])
    return out.reshape(*indices.shape, 1, out_dims)
