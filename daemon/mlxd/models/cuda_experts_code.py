"""CUDA text both routed-experts kernels share (models/cuda_experts.py, the chunked one, and cuda_experts_few.py):
MXFP4's decoding, and the end of a chunk, where each warp sums its lanes and writes its rows' outputs."""

from __future__ import annotations

# MXFP4's values. E2M1 codes (sign, 2 exponent bits, 1 mantissa bit: 0, 0.5, 1, 1.5, 2, 3, 4, 6) are decoded two at
# a time through float16: the code's sign moved to bit 15 and its other three bits to bits 11-9 make the float16
# whose value is the code's / 2^14 (codes 0 and 1 become float16 subnormals, so one placement of the bits serves
# every code), and its conversion to float32 is exact. WORD's 8 codes go to q[0..7]; the 2^14 goes into
# the E8M0 scale `s` instead: E8M0_SCALE_X16384 = 2^(s - 127) * 2^14. About 5 instructions for two values, where
# building each float from the code's bits took about 15 a value (gpt-oss-20b's experts, session 20: the decoding
# was most of the few-pairs kernel's arithmetic). A scale from s = 241 on (2^114 and more: no real checkpoint has
# one) comes out infinite, so its block's outputs are infinite or NaN.
E2M1_WORD = """
                    #pragma unroll
                    for (int t = 0; t < 4; ++t) {  // codes t and t + 4 of WORD, in a register's two halves
                        const uint32_t two = WORD >> (4 * t);
                        const uint32_t h = ((two << 9) & 0x0E000E00u) | ((two << 12) & 0x80008000u);
                        asm("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %2; cvt.f32.f16 %0, lo; cvt.f32.f16 %1, hi; }"
                            : "=f"(q[t]), "=f"(q[t + 4]) : "r"(h));
                    }"""
E8M0_SCALE_X16384 = "(s <= 240u ? __int_as_float((int)((s + 14u) << 23)) : __int_as_float((int)(s << 23)) * 16384.f)"

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
