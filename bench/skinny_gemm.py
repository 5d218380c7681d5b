"""A tensor-core GEMM for a decode step's few rows (y = x @ W.T, x with at most 16 rows, bf16 or fp16), written
as an MLX custom CUDA kernel, against MLX's matmul (cuBLASLt at 2..16 rows). The question it answers: is the
host cost of encoding cuBLAS matmuls what holds a 16-row decode step back, and would a kernel of our own win?

    python bench/skinny_gemm.py [--model PATH]   (GPU only)

Prints (1) the largest error of each against float32, (2) GPU time per matmul at 16 rows for the 8B shapes,
(3) host time per call (Python, then mx.async_eval) for 129 chained calls, as a step has, and with --model,
(4) DecodeBatch ms per step with nn.Linear going through this kernel or MLX's matmul, alternating rounds.

The kernel: mma.sync m16n8k16 with fp32 accumulators. The 16 rows are the A operand (rows past M read as zero),
8 weight rows (output features) a B operand, taken straight from W's row-major layout. Each lane loads 16 bytes
of x and of W per 32-wide slice of K, and the K order inside a slice is permuted identically for x and W (a dot
product does not care), so no shuffles are needed. Warps of a block split K; shared memory adds their parts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

_HEADER = r"""
__device__ __forceinline__ void mma_16816(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                          unsigned b0, unsigned b1, bool bf16) {
  if (bf16) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n" : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n" : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}
"""

# Lane (g = lane / 4, t = lane % 4) holds x rows g and g + 8 and weight row g of each 8-row tile, at K offsets
# 8t..8t+7 of a 32-wide slice. mma k-step s (0, 1) uses offsets 8t+4s..8t+4s+3 as the fragment's logical
# columns 2t, 2t+1, 2t+8, 2t+9.
_SOURCE = r"""
  const int M = x_shape[0], K = x_shape[1], N = w_shape[0];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * (8 * TILES);
  float acc[TILES][4];
  #pragma unroll
  for (int i = 0; i < TILES; ++i) { acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f; }
  const uint4 zero = make_uint4(0, 0, 0, 0);
  const bool has_a = g < M, has_b = g + 8 < M;
  const T* xa = x + (size_t)g * K + 8 * t;
  const T* xb = x + (size_t)(g + 8) * K + 8 * t;
  const T* wr[TILES];
  bool has_w[TILES];
  #pragma unroll
  for (int i = 0; i < TILES; ++i) {
    const int n = n0 + 8 * i + g;
    has_w[i] = n < N;
    wr[i] = w + (size_t)(has_w[i] ? n : 0) * K + 8 * t;
  }
  const int slices = K / 32;
  for (int first = warp * UNROLL; first < slices; first += WARPS * UNROLL) {
    uint4 va[UNROLL], vb[UNROLL], vw[UNROLL][TILES];
    #pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const bool ok = first + u < slices;
      const int k = (first + u) * 32;
      va[u] = ok && has_a ? *reinterpret_cast<const uint4*>(xa + k) : zero;
      vb[u] = ok && has_b ? *reinterpret_cast<const uint4*>(xb + k) : zero;
      #pragma unroll
      for (int i = 0; i < TILES; ++i)
        vw[u][i] = ok && has_w[i] ? __ldcs(reinterpret_cast<const uint4*>(wr[i] + k)) : zero;
    }
    #pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      #pragma unroll
      for (int i = 0; i < TILES; ++i) {
        mma_16816(acc[i], va[u].x, vb[u].x, va[u].y, vb[u].y, vw[u][i].x, vw[u][i].y, IS_BF16);
        mma_16816(acc[i], va[u].z, vb[u].z, va[u].w, vb[u].w, vw[u][i].z, vw[u][i].w, IS_BF16);
      }
    }
  }
  __shared__ float parts[WARPS][16][8 * TILES];
  #pragma unroll
  for (int i = 0; i < TILES; ++i) {
    parts[warp][g][8 * i + 2 * t] = acc[i][0];
    parts[warp][g][8 * i + 2 * t + 1] = acc[i][1];
    parts[warp][g + 8][8 * i + 2 * t] = acc[i][2];
    parts[warp][g + 8][8 * i + 2 * t + 1] = acc[i][3];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < 16 * 8 * TILES; idx += 32 * WARPS) {
    const int m = idx / (8 * TILES), n = idx % (8 * TILES);
    if (m < M && n0 + n < N) {
      float sum = 0.f;
      #pragma unroll
      for (int p = 0; p < WARPS; ++p) sum += parts[p][m][n];
      y[(size_t)m * N + n0 + n] = static_cast<T>(sum);
    }
  }
"""

_kernel = None


def skinny_matmul(x: mx.array, w: mx.array, tiles: int = 4, warps: int = 4, unroll: int = 2) -> mx.array:
    """x [M, K] @ w[N, K].T for M <= 16, K a multiple of 32, bf16 or fp16: `tiles` 8-column tiles per block,
    `warps` warps splitting K, `unroll` 32-wide K slices loaded before they are multiplied."""
    global _kernel
    if _kernel is None:
        _kernel = mx.fast.cuda_kernel(name="skinny_gemm", input_names=["x", "w"], output_names=["y"],
                                      source=_SOURCE, header=_HEADER)
    M, K = x.shape
    N = w.shape[0]
    assert M <= 16 and K % 32 == 0 and x.dtype in (mx.bfloat16, mx.float16) and w.dtype == x.dtype
    blocks = -(-N // (8 * tiles))
    template = [("T", x.dtype), ("TILES", tiles), ("WARPS", warps), ("UNROLL", unroll),
                ("IS_BF16", x.dtype == mx.bfloat16)]
    return _kernel(inputs=[x, w], template=template, grid=(blocks * 32 * warps, 1, 1),
                   threadgroup=(32 * warps, 1, 1), output_shapes=[(M, N)], output_dtypes=[x.dtype])[0]


# (out, in) features of the 8B shape's layers after fusion, and its lm_head.
SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096)]


def _settings(n: int) -> tuple[int, int, int]:
    """(tiles, warps, unroll) for `n` output features: the fastest of the settings tried on an H100."""
    return (1, 8, 2) if n >= 16384 else (4, 4, 2)


def check_errors() -> None:
    for m in (1, 3, 16):
        for n, k in SHAPES[:4] + [(100, 64)]:
            x = mx.random.normal((m, k)).astype(mx.bfloat16)
            w = (mx.random.normal((n, k)) * 0.02).astype(mx.bfloat16)
            exact = x.astype(mx.float32) @ w.astype(mx.float32).T
            ours = mx.max(mx.abs(skinny_matmul(x, w, *_settings(n)).astype(mx.float32) - exact)).item()
            theirs = mx.max(mx.abs((x @ w.T).astype(mx.float32) - exact)).item()
            print(f"M={m:2d} {n:6d}x{k:<5d} max |error| vs float32: kernel {ours:.4f}  matmul {theirs:.4f}")


def _queued_ms(fn, reps: int = 50) -> float:
    mx.eval(fn())
    start = time.perf_counter()
    mx.eval([fn() for _ in range(reps)])
    return (time.perf_counter() - start) / reps * 1e3


def gpu_times() -> None:
    print("GPU ms per matmul at 16 rows (50 queued back to back), and the weight bandwidth that is")
    for n, k in SHAPES:
        x = mx.random.normal((16, k)).astype(mx.bfloat16)
        w = (mx.random.normal((n, k)) * 0.02).astype(mx.bfloat16)
        mx.eval(x, w)
        a, b = _queued_ms(lambda: x @ w.T), _queued_ms(lambda: skinny_matmul(x, w, *_settings(n)))
        gb = n * k * 2 / 1e9
        print(f"  {n:6d}x{k:<5d} matmul {a:.3f} ms ({gb / a:.2f} TB/s)  kernel {b:.3f} ms ({gb / b:.2f} TB/s)")


def host_times() -> None:
    x = mx.random.normal((16, 512)).astype(mx.bfloat16)
    w = mx.random.normal((512, 512)).astype(mx.bfloat16)
    mx.eval(x, w)
    print("host us per call, 129 chained calls on small shapes (python builds the graph, then mx.async_eval)")
    for name, fn in (("matmul", lambda h: h @ w.T), ("kernel", lambda h: skinny_matmul(h, w))):
        build = encode = 0.0
        for rep in range(25):
            mx.synchronize()
            start = time.perf_counter()
            h = x
            for _ in range(129):
                h = fn(h)
            built = time.perf_counter()
            mx.async_eval(h)
            queued = time.perf_counter()
            mx.eval(h)
            if rep >= 5:
                build, encode = build + built - start, encode + queued - built
        print(f"  {name}: python {build / 20 / 129 * 1e6:.1f}  async_eval {encode / 20 / 129 * 1e6:.1f}")


def in_step(model_path: Path, rounds: int = 4) -> None:
    from batch_step_compare import lengths_for, mlxd_batch_ms
    from mlxd.loading.model_source import load_model_and_tokenizer

    model = load_model_and_tokenizer(model_path)[0].model
    use_kernel = {"on": False}
    plain = nn.Linear.__call__

    def linear(self, x):
        rows = x.size // x.shape[-1]
        if use_kernel["on"] and "bias" not in self and x.dtype == mx.bfloat16 and rows <= 16:
            w = self.weight
            return skinny_matmul(x.reshape(rows, -1), w, *_settings(w.shape[0])).reshape(*x.shape[:-1], -1)
        return plain(self, x)

    nn.Linear.__call__ = linear
    times: dict[tuple[str, bool], list[float]] = {}
    for r in range(rounds):
        for kind in ("mixed", "aligned"):
            for on in ((False, True) if r % 2 == 0 else (True, False)):
                use_kernel["on"] = on
                times.setdefault((kind, on), []).append(mlxd_batch_ms(model, lengths_for(kind, 16, 128), 64))
    nn.Linear.__call__ = plain
    print(f"DecodeBatch ms per step, 16 rows, medians of {rounds} alternating rounds")
    for kind in ("mixed", "aligned"):
        a, b = (sorted(times[(kind, on)])[rounds // 2] for on in (False, True))
        print(f"  {kind:8s} matmul {a:.2f}  kernel {b:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, help="also time DecodeBatch steps of this model both ways")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    mx.random.seed(0)
    check_errors()
    gpu_times()
    host_times()
    if args.model:
        in_step(args.model)


if __name__ == "__main__":
    main()
