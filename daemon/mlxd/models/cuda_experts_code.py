"""CUDA text both routed-experts kernels share (models/cuda_experts.py, the chunked one, and cuda_experts_few.py):
MXFP4's decoding, and the end of a chunk, where each warp sums its lanes and writes its rows' outputs."""

from __future__ import annotations

# MXFP4's values, as expressions: the E2M1 code `code` (sign, 2 exponent bits, 1 mantissa bit: 0, 0.5, 1, 1.5, 2,
# 3, 4, 6) from its magnitude bits `mag` (code & 7), and the E8M0 scale `s`, 2^(s - 127) (s = 0: 2^-127).
E2M1_MAGNITUDE = "(mag < 2u ? 0.5f * mag : __int_as_float((int)(((mag >> 1) + 126u) << 23 | (mag & 1u) << 22)))"
E8M0_SCALE = "(s == 0u ? __int_as_float(0x00400000) : __int_as_float((int)(s << 23)))"

# A chunk's end: acc[RW][CH] summed over the warp's lanes, then lane r * CH + j writes row r's output for pair j
# (pairs[c + j]); rows past OUT are not written.
SUM_AND_WRITE = """
        float mine = 0.f;  // after the sums, lane r * CH + j writes row r's output for pair j
        #pragma unroll
        for (int r = 0; r < RW; ++r)
            #pragma unroll
            for (int j = 0; j < CH; ++j) {
                float v = acc[r][j];
                #pragma unroll
                for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
                if (lane == r * CH + j) mine = v;
            }
        const int r = lane / CH, j = lane % CH;
        if (r < RW && row0 + r < OUT)
            out[(size_t)pairs[c + j] * OUT + row0 + r] = static_cast<T>(mine);
"""
