"""The routed-experts matmul for few pairs per expert (a decode step of 1-16 tokens), for models/cuda_experts.py.

cuda_experts.py's kernel is faster than MLX's from 256 pairs but slower below (docs/performance.md, session 17).
Read from its code, three things cost it at few pairs, and this kernel differs in each:
- its registers are allocated for an 8-pair body however few pairs a block has, so fewer blocks stay resident to
  hide memory latency: here the largest chunk is a template argument (`MAXCH`) chosen from the pairs per expert;
- its grid is every expert x tile (6,144 blocks for Qwen3-30B-A3B, 384 with work at one token): here, with fewer
  pairs than experts, a block per pair and tile (`BY_PAIR`), the first pair of each expert taking all of its pairs
  and the others returning at once;
- it loads 4 bytes of a weight row per lane: here 16 (one uint4 per row, 4 rows a warp, all issued before the
  arithmetic), so more bytes are in flight per warp.
Its tests (tests/models/test_cuda_experts.py) pass on the H200 (sessions 18, 20, 21); where it is used is
`cuda_experts.kernel_for`'s table (`bench expert_matmul`): faster than MLX's kernel at every decode size for affine
4-bit experts (session 19) and, since MXFP4's codes are decoded through float16, for MXFP4 (session 20: 1.0-2.9x to
512 pairs; before that MXFP4's decoding was most of its arithmetic and it lost to MLX's below 128 pairs); faster
than the chunked kernel too up to 2,048 affine and 1,024 MXFP4 pairs, and than MLX's for bfloat16 experts from 32
pairs (session 21).
"""

from __future__ import annotations

import functools
import re

from mlxd.models.cuda_experts_code import E2M1_WORD, E8M0_SCALE_X16384, SUM_AND_WRITE

# The head: which expert and rows are the block's, and that expert's pairs (with BY_PAIR the block of a pair whose
# expert an earlier pair also has returns: the earlier one's block takes them all).
_HEAD = """
    constexpr int WARPS = 8, TILE = WARPS * RW, VEC = 4;  // RW, AHEAD: template arguments (below)
    constexpr int TILES = (OUT + TILE - 1) / TILE;
    constexpr int LOADS = IN / (PW * VEC);   // 16-byte loads along a weight row
    __shared__ int pairs[MAXP];
    __shared__ int count, taken;
    const int slot = blockIdx.x / TILES, tile = blockIdx.x % TILES;
    const int n = idx_shape[0];
    const int expert = BY_PAIR ? (int)idx[slot] : slot;
    if (threadIdx.x == 0) { count = 0; taken = 0; }
    __syncthreads();
    for (int p = threadIdx.x; p < n; p += blockDim.x)
        if ((int)idx[p] == expert) {
            if (BY_PAIR && p < slot) taken = 1;
            else pairs[atomicAdd(&count, 1)] = p;
        }
    __syncthreads();
    const int m = count;
    if (taken || m == 0) return;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int row0 = tile * TILE + warp * RW;
    int c = 0;
"""

# CH pairs at a time while that many are left (bodies for every CH up to MAXCH, largest first).
_CHUNK = """
    if constexpr (CH <= MAXCH) for (; m - c >= CH; c += CH) {
        float acc[RW][CH];
        #pragma unroll
        for (int r = 0; r < RW; ++r)
            #pragma unroll
            for (int j = 0; j < CH; ++j) acc[r][j] = 0.f;
        const T* xr[CH];
        #pragma unroll
        for (int j = 0; j < CH; ++j) xr[j] = x + (size_t)(pairs[c + j] / DIV) * IN;
        // A lane's loads of its rows (RW 16-byte words and their scales) at one load position, and the arithmetic
        // on them. With AHEAD of 2 the next position's loads are issued before this one's arithmetic (twice the
        // bytes in flight, more registers); with 1 after it. The sums are the same, in the same order.
        auto load = [&](int at_ld, uint4 (&words)[RW], float (&sc)[RW], float (&bi)[RW]) {
            #pragma unroll
            for (int r = 0; r < RW; ++r) {  // a row past the last is read again, never written
                const size_t at = (size_t)expert * OUT + min(row0 + r, OUT - 1);
                words[r] = reinterpret_cast<const uint4*>(w)[at * LOADS + at_ld];
                SCALE
            }
        };
        auto compute = [&](int ld, const uint4 (&wv)[RW], const float (&scale)[RW], const float (&bias)[RW]) {
            #pragma unroll
            for (int v = 0; v < VEC; ++v) {
                float xv[CH][PW], xsum[CH];
                #pragma unroll
                for (int j = 0; j < CH; ++j) {
                    alignas(16) T xs[PW];
                    const T* from = xr[j] + (ld * VEC + v) * PW;
                    if constexpr (sizeof(T) * PW % 16 == 0) {
                        #pragma unroll
                        for (int u = 0; u < (int)(sizeof(T) * PW / 16); ++u)
                            reinterpret_cast<uint4*>(xs)[u] = reinterpret_cast<const uint4*>(from)[u];
                    } else if constexpr (sizeof(T) * PW == 8) {
                        *reinterpret_cast<uint2*>(xs) = *reinterpret_cast<const uint2*>(from);
                    } else {
                        #pragma unroll
                        for (int t = 0; t < PW; ++t) xs[t] = from[t];
                    }
                    xsum[j] = 0.f;
                    #pragma unroll
                    for (int t = 0; t < PW; ++t) {
                        xv[j][t] = static_cast<float>(xs[t]);
                        if constexpr (MODE == 1) xsum[j] += xv[j][t];
                    }
                }
                #pragma unroll
                for (int r = 0; r < RW; ++r) {
                    const uint32_t word = v == 0 ? wv[r].x : v == 1 ? wv[r].y : v == 2 ? wv[r].z : wv[r].w;
                    float q[PW];
                    DECODE
                    #pragma unroll
                    for (int j = 0; j < CH; ++j) {
                        float dot = 0.f;
                        #pragma unroll
                        for (int t = 0; t < PW; ++t) dot += q[t] * xv[j][t];
                        acc[r][j] += MODE == 1 ? scale[r] * dot + bias[r] * xsum[j] : scale[r] * dot;
                    }
                }
            }
        };
        if constexpr (AHEAD > 1) {
            uint4 wv[RW];
            float scale[RW], bias[RW];
            if (lane < LOADS) load(lane, wv, scale, bias);
            for (int ld = lane; ld < LOADS; ld += 32) {
                uint4 next[RW];
                float next_scale[RW], next_bias[RW];
                if (ld + 32 < LOADS) load(ld + 32, next, next_scale, next_bias);
                compute(ld, wv, scale, bias);
                #pragma unroll
                for (int r = 0; r < RW; ++r) {
                    wv[r] = next[r];
                    scale[r] = next_scale[r];
                    bias[r] = next_bias[r];
                }
            }
        } else {
            for (int ld = lane; ld < LOADS; ld += 32) {
                uint4 wv[RW];
                float scale[RW], bias[RW];
                load(ld, wv, scale, bias);
                compute(ld, wv, scale, bias);
            }
        }
SUM_AND_WRITE
    }
"""

# Per weight kind (cuda_experts' MODE): the scale (and affine bias) of row r's group at this load (a load never
# spans two groups: the caller asks GS to be a multiple of PW * VEC), and the PW values of one 32-bit word.
SCALE = {
    0: "sc[r] = 1.f; bi[r] = 0.f;",
    1: """const size_t g = at * (IN / GS) + at_ld * PW * VEC / GS;
                sc[r] = static_cast<float>(scales[g]);
                bi[r] = static_cast<float>(biases[g]);""",
    2: """const uint32_t s = scales[at * (IN / GS) + at_ld * PW * VEC / GS];
                sc[r] = E8M0_SCALE_X16384;
                bi[r] = 0.f;""",
}
DECODE = {
    0: """#pragma unroll
                    for (int t = 0; t < PW; ++t) q[t] = static_cast<float>(reinterpret_cast<const T*>(&word)[t]);""",
    1: """#pragma unroll
                    for (int t = 0; t < PW; ++t)
                        q[t] = static_cast<float>((word >> (BITS * t)) & ((1u << BITS) - 1u));""",
    2: E2M1_WORD.replace("WORD", "word"),  # PW is 8
}


@functools.cache
def source(mode: int) -> str:
    """The kernel's body for weight kind `mode`, made once: made anew for each call, its regular expressions took
    ~0.4 ms of host time a call on the H200's host, which was all `bench expert_matmul` saw of this kernel."""
    chunk = _CHUNK.replace("SUM_AND_WRITE\n", SUM_AND_WRITE.lstrip("\n"))
    chunks = "".join(re.sub(r"\bCH\b", str(n), chunk) for n in (8, 4, 2, 1))
    return (_HEAD + chunks.replace("SCALE", SCALE[mode]).replace("DECODE", DECODE[mode])
            .replace("E8M0_SCALE_X16384", E8M0_SCALE_X16384))


def largest_chunk(tokens: int, top_k: int, experts: int, rows_per_warp: int | None = None) -> int:
    """MAXCH for `tokens` tokens of `top_k` experts each among `experts`: about the pairs a chosen expert holds
    (pairs over the experts expected to be chosen at least once, routing taken as uniform), so a block's registers
    fit what it computes. Qwen3-30B-A3B at 16 tokens: 128 pairs over ~82 experts, 2. At most 32 / RW (the kernel's
    rows a warp, ROWS_PER_WARP unless given): a warp's lanes write its sums, one (row, pair) each."""
    if tokens <= 1:
        return 1
    chosen = experts * (1 - (1 - top_k / experts) ** tokens)
    per_expert = tokens * top_k / chosen
    chunk = 1 if per_expert <= 1.2 else 2 if per_expert <= 3 else 4 if per_expert <= 8 else 8
    return min(chunk, 32 // (rows_per_warp or ROWS_PER_WARP))


# Weight rows a warp holds (the kernel's RW; a block's 8 warps hold 8 * RW rows). 4, as measured in sessions 19-20.
# Fewer rows a warp take fewer registers (64 a thread at 2 rows, ~100 at 4, for sm_90: `python -m bench
# sass_stats`), so more blocks fit an SM, each lane with fewer bytes in flight; `bench expert_matmul
# --rows-per-warp 2` times the other choice: on the H200 (session 21) 2 rows were slower at decode sizes (Qwen3-30B-A3B
# gate/up at 16 tokens 145 us against session 19's 124 at 4 rows; gpt-oss-20b 225 against session 20's 203), so bytes
# in flight a lane matter more than blocks an SM. RW * the largest chunk must not pass 32 (largest_chunk keeps to it).
ROWS_PER_WARP = 4

# Load positions of a lane's weight rows in flight (the kernel's AHEAD): with 2, the next position's RW 16-byte
# loads are issued before this one's arithmetic. A lane makes IN / (PW * 4 * 32) loads a row in all (2 for a
# 2,048-wide 4-bit row), so 2 has all of such a row's in flight at once: twice the bytes. Registers for sm_90
# (`bench sass_stats --loads-ahead 2`, 16 tokens): affine 4-bit 121-128 against 96-102 (still 2 blocks of 256
# threads an SM), MXFP4 131 against 72 (1 block against 3), bfloat16 80 against 48. 1 as measured until session
# 21; `bench expert_matmul --loads-ahead 2` times 2 (the sums are the same, in the same order).
LOADS_AHEAD = 1


def rows_a_block(rows_per_warp: int) -> int:
    return 8 * rows_per_warp
