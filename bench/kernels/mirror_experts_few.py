"""cuda_experts_few.py's kernel mirrored statement by statement in NumPy (blocks, warps, lanes and chunk bodies as
loops), against MLX's gathered matmul on the CPU: checks the kernel's index arithmetic (which expert and rows a block
takes, where a lane's 16-byte loads and their group's scale fall, the word order, the decoding, where each sum is
written) without a GPU, for every largest chunk and both grids. Edit it with the kernel.

    python -m bench mirror_experts_few

Prints the largest difference per weight kind (float32 rounding, ~1e-6, where the index arithmetic is right).
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench import common

WARPS, VEC = 8, 4


@dataclass
class Weights:
    words: np.ndarray  # the packed weight as 32-bit words, row-major
    mode: int  # 0 floats, 1 affine, 2 MXFP4
    bits: int
    per_word: int  # values in one 32-bit word
    group: int
    scales: np.ndarray | None = None
    biases: np.ndarray | None = None


def e2m1_word(word: int) -> np.ndarray:
    """The 8 E2M1 codes of a 32-bit word / 2^14, as cuda_experts_code.E2M1_WORD decodes them through float16."""
    q = np.zeros(8)
    for t in range(4):
        two = word >> (4 * t)
        h = ((two << 9) & 0x0E000E00) | ((two << 12) & 0x80008000)
        q[t], q[t + 4] = np.array([h & 0xFFFF, h >> 16], np.uint16).view(np.float16).astype(np.float64)
    return q


def decode(word: int, w: Weights) -> np.ndarray:
    if w.mode == 0:  # floats: bfloat16 pairs (low half first) or one float32
        if w.per_word == 1:
            return np.array([np.uint32(word).view(np.float32)], np.float64)
        halves = [(word & 0xFFFF) << 16, (word >> 16) << 16]
        return np.array([np.uint32(h).view(np.float32) for h in halves], np.float64)
    if w.mode == 2:
        return e2m1_word(word)
    return np.array([(word >> (w.bits * t)) & ((1 << w.bits) - 1) for t in range(w.per_word)], np.float64)


def scale_bias(w: Weights, at: int, load: int, in_dims: int) -> tuple[float, float]:
    if w.mode == 0:
        return 1.0, 0.0
    g = at * (in_dims // w.group) + load * w.per_word * VEC // w.group
    assert w.scales is not None  # quantized modes carry their scales (and affine its biases)
    if w.mode == 1:
        assert w.biases is not None
        return float(w.scales[g]), float(w.biases[g])
    return 2.0 ** (int(w.scales[g]) - 127 + 14), 0.0  # the codes came out / 2^14


def mirror(x: np.ndarray, idx: np.ndarray, w: Weights, shape: tuple[int, int, int], div: int, max_chunk: int,
           by_pair: bool, RW: int = 4) -> np.ndarray:  # noqa: N803 (the kernel's name for it)
    """The kernel's output [pairs, out] for x [rows * in] and idx [pairs]; shape = (experts, out, in); RW weight
    rows a warp."""
    experts, out_dims, in_dims = shape
    tiles, loads, n = -(-out_dims // (WARPS * RW)), in_dims // (w.per_word * VEC), idx.size
    out = np.full((n, out_dims), np.nan)
    for slot, tile in itertools.product(range(n if by_pair else experts), range(tiles)):
        expert = int(idx[slot]) if by_pair else slot
        taken = by_pair and any(idx[p] == expert for p in range(slot))
        pairs = [p for p in range(n) if idx[p] == expert and not (by_pair and p < slot)][:: -1 if slot % 2 else 1]
        if taken or not pairs:
            continue
        for warp in range(WARPS):
            row0, c = tile * WARPS * RW + warp * RW, 0
            for chunk in (8, 4, 2, 1):
                while chunk <= max_chunk and len(pairs) - c >= chunk:
                    acc = np.zeros((RW, chunk))
                    rows = [(pairs[c + j] // div) * in_dims for j in range(chunk)]
                    # Each lane's loads, strided by 32; their sums meet in the warp's shuffle.
                    for load in [ld for lane in range(32) for ld in range(lane, loads, 32)]:
                        for r in range(RW):
                            at = expert * out_dims + min(row0 + r, out_dims - 1)
                            scale, bias = scale_bias(w, at, load, in_dims)
                            for v in range(VEC):
                                q = decode(int(w.words[(at * loads + load) * VEC + v]), w)
                                for j in range(chunk):
                                    start = rows[j] + (load * VEC + v) * w.per_word
                                    xv = x[start:start + w.per_word]
                                    dot = float(q @ xv)
                                    acc[r, j] += scale * dot + bias * xv.sum() if w.mode == 1 else scale * dot
                    for r, j in itertools.product(range(RW), range(chunk)):
                        if row0 + r < out_dims:
                            out[pairs[c + j], row0 + r] = acc[r, j]
                    c += chunk
    return out


def case(kind: str, tokens: int, per_pair: bool, experts: int = 6, k: int = 2, out_dims: int = 40,
         in_dims: int = 64) -> float:
    import mlx.core as mx

    from mlxd.models import ops
    from mlxd.models.base import ExpertQuantization

    rng = np.random.default_rng(tokens)
    w = mx.array(rng.normal(size=(experts, out_dims, in_dims)).astype(np.float32) * 0.2)
    x = mx.array(rng.normal(size=(tokens, k, 1, in_dims) if per_pair else (tokens, 1, 1, in_dims)).astype(np.float32))
    idx = mx.array(np.stack([rng.permutation(experts)[:k] for _ in range(tokens)]).astype(np.uint32))
    quant: Any = None
    if kind == "float32":
        weights = Weights(np.array(w).view(np.uint32).reshape(-1), 0, 0, 1, 1)
    elif kind == "bfloat16":
        w, x = w.astype(mx.bfloat16), x.astype(mx.bfloat16)
        halves = (np.array(w.astype(mx.float32)).view(np.uint32) >> 16).reshape(-1)
        weights = Weights((halves[0::2] | (halves[1::2] << 16)).astype(np.uint32), 0, 0, 2, 1)
    else:
        mode, bits = {"affine4": ("affine", 4), "affine8": ("affine", 8), "mxfp4": ("mxfp4", 4)}[kind]
        packed, scales, *biases = mx.quantize(w, 32, bits, mode=mode)
        quant = ExpertQuantization(32, bits, mode, scales, biases[0] if biases else None)
        weights = Weights(np.array(packed).reshape(-1), 1 if mode == "affine" else 2, bits, 32 // bits, 32,
                          np.array(scales).reshape(-1), np.array(biases[0]).reshape(-1) if biases else None)
        w = packed
    with ops.using("mlx"):
        if kind == "bfloat16":  # MLX's CPU gathered matmul takes float32: the same rounded values widened
            want = ops.gather_matmul(x.astype(mx.float32), idx, w.astype(mx.float32), None)
        else:
            want = ops.gather_matmul(x, idx, w, quant)
    want_rows = np.array(want.astype(mx.float32)).reshape(-1, out_dims)
    flat_x = np.array(x.astype(mx.float32)).reshape(-1).astype(np.float64)
    return max(np.abs(mirror(flat_x, np.array(idx).reshape(-1), weights, (experts, out_dims, in_dims),
                             1 if per_pair else k, min(chunk, 32 // rw), by_pair, rw) - want_rows).max()
               for chunk in (1, 2, 4, 8) for by_pair in (True, False) for rw in (2, 4))


def main(argv: list[str] | None = None) -> None:
    common.parser(__doc__).parse_args(argv)
    worst = 0.0
    for kind in ("affine4", "affine8", "mxfp4", "float32", "bfloat16"):
        error = max(case(kind, tokens, per_pair) for tokens in (1, 5) for per_pair in (False, True))
        print(f"{kind}: largest difference {error:.2e}", flush=True)
        worst = max(worst, error)
    sys.exit(0 if worst < 1e-4 else 1)


if __name__ == "__main__":
    main()
