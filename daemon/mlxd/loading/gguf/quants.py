"""GGML block formats decoded into affine codes: value = scale * q + bias, one (scale, bias) per 32 values.

Each decoder takes the raw blocks of a tensor, shape (n_blocks, block_bytes) uint8, and returns unsigned codes
q (n_blocks, values_per_block) uint8 with per-32-value scales and biases in float32. The arithmetic mirrors
ggml's: float16 block scales widened to float32, products of a float16 and a small integer (exact in float32),
so `scale * q + bias` reproduces ggml's dequantized float32 values bit for bit.

Layouts are ggml's (ggml-common.h): Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 hold 32 values a block; Q4_K/Q5_K hold 256 values
in 8 sub-blocks of 32 with 6-bit scales and mins packed into 12 bytes. MXFP4 is not affine: `mxfp4` relabels its
blocks for MLX's mxfp4 mode instead, as `mxfp4_paired` does Ollama's first MXFP4 type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

GROUP_SIZE = 32


@dataclass(frozen=True)
class AffineCodes:
    """`scales[..., g] * q[..., 32 g + i] + biases[..., g]` is the encoded value."""

    q: np.ndarray  # uint8, (n_blocks, values_per_block)
    scales: np.ndarray  # float32, (n_blocks, values_per_block // 32)
    biases: np.ndarray  # float32, same shape as scales
    bits: int


def _f16(raw: np.ndarray) -> np.ndarray:
    """Little-endian float16 fields (n, 2) uint8 -> float32 (n, 1)."""
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def _nibbles_split(qs: np.ndarray) -> np.ndarray:
    """(n, 16) bytes -> (n, 32) values: low nibbles are values 0..15, high nibbles values 16..31 (ggml order)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _high_bits(qh: np.ndarray, count: int) -> np.ndarray:
    """Bit i of the little-endian bit field `qh` (n, count // 8) as (n, count) 0/1 values."""
    return np.unpackbits(qh, axis=-1, bitorder="little")[:, :count]


def q4_0(blocks: np.ndarray) -> AffineCodes:
    # block: f16 d, 16 bytes of nibbles; value = d * (q - 8)
    d = _f16(blocks[:, 0:2])
    return AffineCodes(_nibbles_split(blocks[:, 2:18]), d, -8.0 * d, 4)


def q4_1(blocks: np.ndarray) -> AffineCodes:
    # block: f16 d, f16 m, 16 bytes of nibbles; value = d * q + m
    return AffineCodes(_nibbles_split(blocks[:, 4:20]), _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4]), 4)


def q5_0(blocks: np.ndarray) -> AffineCodes:
    # block: f16 d, 32 high bits, 16 bytes of low nibbles; value = d * (q - 16)
    d = _f16(blocks[:, 0:2])
    q = _nibbles_split(blocks[:, 6:22]) | (_high_bits(blocks[:, 2:6], 32) << 4)
    return AffineCodes(q, d, -16.0 * d, 5)


def q5_1(blocks: np.ndarray) -> AffineCodes:
    # block: f16 d, f16 m, 32 high bits, 16 bytes of low nibbles; value = d * q + m
    q = _nibbles_split(blocks[:, 8:24]) | (_high_bits(blocks[:, 4:8], 32) << 4)
    return AffineCodes(q, _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4]), 5)


def q8_0(blocks: np.ndarray) -> AffineCodes:
    # block: f16 d, 32 int8; value = d * q. Codes are offset by 128 to be unsigned.
    d = _f16(blocks[:, 0:2])
    q = (np.ascontiguousarray(blocks[:, 2:34]).view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return AffineCodes(q, d, -128.0 * d, 8)


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and mins of a K-quant super-block from its 12 packed bytes."""
    lo, hi, mixed = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([lo & 0x3F, (mixed & 0x0F) | ((lo >> 6) << 4)], axis=-1)
    mins = np.concatenate([hi & 0x3F, (mixed >> 4) | ((hi >> 6) << 4)], axis=-1)
    return scales.astype(np.float32), mins.astype(np.float32)


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 128) bytes -> (n, 256) values: each 32-byte chunk holds one sub-block in low, the next in high nibbles."""
    chunks = qs.reshape(qs.shape[0], 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (chunks & 0x0F).reshape(qs.shape[0], 256)


def q4_k(blocks: np.ndarray) -> AffineCodes:
    # super-block: f16 d, f16 dmin, 12 bytes scales/mins, 128 bytes nibbles; value = d*sc*q - dmin*m
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, m = _k_scales(blocks[:, 4:16])
    return AffineCodes(_k_nibbles(blocks[:, 16:144]), d * sc, -(dmin * m), 4)


def q5_k(blocks: np.ndarray) -> AffineCodes:
    # as Q4_K, plus 32 bytes whose bit i (of each byte l) is the fifth bit of value l of sub-block i
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, m = _k_scales(blocks[:, 4:16])
    qh = blocks[:, 16:48]
    high = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = _k_nibbles(blocks[:, 48:176]) | (high.reshape(blocks.shape[0], 256) << 4)
    return AffineCodes(q, d * sc, -(dmin * m), 5)


# GGML type name -> decoder; these map onto MLX affine quantization with group size 32 without loss.
EXACT_DECODERS: dict[str, Callable[[np.ndarray], AffineCodes]] = {
    "Q4_0": q4_0,
    "Q4_1": q4_1,
    "Q5_0": q5_0,
    "Q5_1": q5_1,
    "Q8_0": q8_0,
    "Q4_K": q4_k,
    "Q5_K": q5_k,
}


def mxfp4(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GGML MXFP4 blocks (n, 17) as MLX mxfp4 arrays: codes (n, 16) uint8 and scales (n, 1) uint8.

    A ggml block is one E8M0 exponent byte e, then 16 bytes of FP4 E2M1 codes, value j in the low nibble of
    byte j and value j + 16 in its high nibble (as Q4_0); ggml's value is its doubled E2M1 table times
    2^(e - 127) / 2, i.e. E2M1 * 2^(e - 127), what MLX's mxfp4 mode computes with e as the scale. MLX packs the
    codes in value order from the low bits up (value 2j low, 2j + 1 high in byte j), so only the nibbles move.
    """
    codes = _nibbles_split(blocks[:, 1:17])
    return codes[:, 0::2] | (codes[:, 1::2] << 4), blocks[:, 0:1]


# Ollama's first MXFP4 type (its converter, August 2025): ggml type 4, a slot ggml freed (Q4_2, removed before GGUF
# existed), so a GGUF tensor of type 4 is always this. Blocks of 32 values in 17 bytes as ggml's MXFP4, but the codes
# in the order transformers and OpenAI's checkpoints pack them. Ollama's later files use ggml's type 39 ("MXFP4").
OLLAMA_MXFP4 = "OLLAMA_MXFP4"
OLLAMA_MXFP4_CODE = 4
# Types the `gguf` package does not know: name -> (values per block, bytes per block).
OTHER_BLOCK_SIZES = {OLLAMA_MXFP4: (32, 17)}


def mxfp4_paired(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ollama's type-4 MXFP4 blocks (n, 17) as MLX mxfp4 arrays: codes (n, 16) uint8 and scales (n, 1) uint8.

    A block is the E8M0 exponent byte, then 16 bytes holding value 2j in the low nibble of byte j and value 2j + 1
    in its high nibble: the checkpoint's `*_blocks` bytes as they are, which is MLX's packing already, so nothing
    moves (Ollama's own loader swapped them into ggml's order on loading).
    """
    return blocks[:, 1:17], blocks[:, 0:1]
