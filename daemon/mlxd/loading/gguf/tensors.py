"""GGUF tensors to MLX arrays, one tensor at a time: dense floats, or MLX-quantized with group size 32.

Four kinds of GGML type:
- dense (F32, F16, BF16): read as they are;
- exact (quants.EXACT_DECODERS): repacked into MLX's affine layout with the same codes, scales and biases;
- MXFP4 (ggml type 39, and Ollama's first type 4): repacked into MLX's mxfp4 mode with the same E2M1 codes and
  E8M0 scales (quants.mxfp4, quants.mxfp4_paired), or dequantized by MLX from them;
- requantized (Q2_K, Q3_K, Q6_K: 16-value groups, which MLX lacks): dequantized by the `gguf` package, then
  held dense or requantized to 8 bits with group size 32 (within one 8-bit step, 1/255 of a group's range).
Anything else raises ModelLoadError naming the type. Quantized tensors are matrices [out, in] or stacked
experts' matrices [E, out, in]; either is converted as rows of `in` values, since ggml blocks never cross a row.

A large tensor is converted a block of rows at a time, each block written into the preallocated result, so its
numpy and MLX temporaries stay near CHUNK_ELEMENTS values: Gemma 3's 262k x 640 embedding would otherwise take
~1.3 GB of temporaries to become a 320 MB float16 array.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from mlxd.errors import ModelLoadError
from mlxd.loading.gguf.quants import (
    EXACT_DECODERS,
    GROUP_SIZE,
    OLLAMA_MXFP4,
    OTHER_BLOCK_SIZES,
    mxfp4,
    mxfp4_paired,
)
from mlxd.loading.gguf.reader import GGUFTensor

DENSE_TYPES = ("F32", "F16", "BF16")
MXFP4 = "MXFP4"
# MXFP4 types -> their blocks as MLX mxfp4 codes and scales.
MXFP4_DECODERS = {MXFP4: mxfp4, OLLAMA_MXFP4: mxfp4_paired}
REQUANTIZED_TYPES = ("Q2_K", "Q3_K", "Q6_K")
REQUANTIZED_BITS = 8
SUPPORTED_TYPES = (*DENSE_TYPES, *EXACT_DECODERS, *MXFP4_DECODERS, *REQUANTIZED_TYPES)
CHUNK_ELEMENTS = 1 << 22  # values converted at once (16 MiB as float32)


@dataclass(frozen=True)
class QuantizedArrays:
    weight: mx.array  # uint32, packed as MLX quantization packs it
    scales: mx.array
    biases: mx.array | None  # None in mxfp4 mode, which has none
    bits: int
    mode: str = "affine"


def check_type(tensor: GGUFTensor) -> None:
    if tensor.type_name not in SUPPORTED_TYPES:
        raise ModelLoadError(
            f"tensor {tensor.name} has GGML type {tensor.type_name}, which mlxd cannot load "
            f"(supported: {', '.join(SUPPORTED_TYPES)})"
        )


def is_quantized(type_name: str) -> bool:
    return type_name not in DENSE_TYPES


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes (rows, cols) < 2**bits into MLX's layout: a little-endian bit stream, 8 codes per `bits` bytes.

    MLX reads value i of a uint32 from bits [bits*i, bits*i + bits); all its platforms are little-endian, so the
    uint32 view of this byte stream is what it expects.
    """
    rows, cols = q.shape
    octets = q.reshape(rows, cols // 8, 8)
    words = np.zeros((rows, cols // 8), dtype=np.uint64)
    for i in range(8):  # one slice at a time: a uint64 copy of every code would take 8 bytes per weight
        words |= octets[..., i].astype(np.uint64) << np.uint64(bits * i)
    stream = words.view(np.uint8).reshape(rows, cols // 8, 8)[..., :bits]
    return np.ascontiguousarray(stream).reshape(rows, -1).view(np.uint32)


def _blocks(tensor: GGUFTensor) -> np.ndarray:
    sizes = OTHER_BLOCK_SIZES.get(tensor.type_name) or GGML_QUANT_SIZES[GGMLQuantizationType[tensor.type_name]]
    block_bytes = sizes[1]
    return tensor.raw.reshape(-1, block_bytes)


def _rows(tensor: GGUFTensor) -> tuple[int, int]:
    cols = tensor.shape[-1]
    return tensor.size // cols, cols


def _dense_numpy(tensor: GGUFTensor) -> np.ndarray:
    """Dense float values (rows, cols) in the narrowest numpy type that holds them exactly (BF16 as uint16 bits)."""
    rows, cols = _rows(tensor)
    if tensor.type_name == "F32":
        return tensor.raw.view(np.float32).reshape(rows, cols)
    if tensor.type_name in ("F16", "BF16"):
        return tensor.raw.view(np.float16 if tensor.type_name == "F16" else np.uint16).reshape(rows, cols)
    return gguf_dequantize(tensor.raw.reshape(rows, -1), GGMLQuantizationType[tensor.type_name])


def _to_mx(arr: np.ndarray, type_name: str) -> mx.array:
    out = mx.array(arr)
    return out.view(mx.bfloat16) if type_name == "BF16" and arr.dtype == np.uint16 else out


def _affine(tensor: GGUFTensor) -> tuple[mx.array, mx.array, mx.array, int]:
    """The exact MLX repacking of a block-quantized tensor: weight, scales and biases in float32, bits."""
    rows, cols = _rows(tensor)
    codes = EXACT_DECODERS[tensor.type_name](_blocks(tensor))
    q = codes.q.reshape(rows, cols)
    scales = codes.scales.reshape(rows, cols // GROUP_SIZE)
    biases = codes.biases.reshape(rows, cols // GROUP_SIZE)
    return mx.array(pack(q, codes.bits)), mx.array(scales), mx.array(biases), codes.bits


def _mxfp4(tensor: GGUFTensor) -> tuple[mx.array, mx.array]:
    """The exact MLX mxfp4 repacking of an MXFP4 tensor: weight uint32 [rows, cols/8], scales uint8 [rows, cols/32]."""
    rows, cols = _rows(tensor)
    codes, exponents = MXFP4_DECODERS[tensor.type_name](_blocks(tensor))
    weight = np.ascontiguousarray(codes).reshape(rows, cols // 2).view(np.uint32)
    return mx.array(weight), mx.array(exponents.reshape(rows, cols // GROUP_SIZE))


def _shape(tensor: GGUFTensor, arr: mx.array) -> mx.array:
    return arr.reshape(tensor.shape) if arr.shape != tensor.shape else arr


def _row_blocks(tensor: GGUFTensor, row_order: np.ndarray | None, chunk_elements: int
                ) -> Iterator[tuple[int, int, GGUFTensor]]:
    """Consecutive blocks of output rows, each a tensor of its own whose rows are already in output order."""
    rows, cols = _rows(tensor)
    per_row = tensor.raw.reshape(rows, -1)  # ggml rows are whole blocks, so each row is a run of bytes
    step = max(1, chunk_elements // cols)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        raw = per_row[start:stop] if row_order is None else per_row[row_order[start:stop]]
        yield start, stop, GGUFTensor(tensor.name, tensor.type_name, (stop - start, cols), raw.reshape(-1))


def _by_rows(tensor: GGUFTensor, row_order: np.ndarray | None, chunk_elements: int,
             convert: Callable[[GGUFTensor], tuple[mx.array, ...]]) -> tuple[mx.array, ...]:
    """`convert` applied to blocks of rows and stacked; one block is returned lazily, several evaluated in place."""
    rows, _ = _rows(tensor)
    outs: list[mx.array] = []
    for start, stop, block in _row_blocks(tensor, row_order, chunk_elements):
        parts = convert(block)
        if stop - start == rows:
            return parts
        if not outs:
            outs = [mx.zeros((rows, *p.shape[1:]), dtype=p.dtype) for p in parts]
        for out, part in zip(outs, parts):
            out[start:stop] = part
        # Evaluating now frees the block's temporaries; MLX writes into the result's buffer, not a copy of it.
        mx.eval(*outs)
    return tuple(outs)


def dense(tensor: GGUFTensor, dtype: mx.Dtype, row_order: np.ndarray | None = None, *,
          chunk_elements: int = CHUNK_ELEMENTS) -> mx.array:
    """`tensor` as a float array of `dtype`, rows reordered by `row_order` when given (evaluate it next)."""
    check_type(tensor)

    def convert(block: GGUFTensor) -> tuple[mx.array]:
        if block.type_name in EXACT_DECODERS:
            weight, scales, biases, bits = _affine(block)
            values = mx.dequantize(weight, scales, biases, group_size=GROUP_SIZE, bits=bits)
            return (values.astype(dtype),)
        if block.type_name in MXFP4_DECODERS:
            # E2M1 times a power of two: exact in float32 (gguf's dequantizer does not know Ollama's type 4).
            weight, scales = _mxfp4(block)
            values = mx.dequantize(weight, scales, group_size=GROUP_SIZE, bits=4, mode="mxfp4", dtype=mx.float32)
            return (values.astype(dtype),)
        return (_to_mx(_dense_numpy(block), block.type_name).astype(dtype),)

    (values,) = _by_rows(tensor, row_order, chunk_elements, convert)
    return _shape(tensor, values)


def quantized(tensor: GGUFTensor, dtype: mx.Dtype, row_order: np.ndarray | None = None, *,
              chunk_elements: int = CHUNK_ELEMENTS) -> QuantizedArrays:
    """A quantized matrix [out, in], or stacked experts' matrices [E, out, in], in MLX's layout: affine with
    scales and biases of `dtype`, or mxfp4 with its uint8 scales (evaluate it next). Arrays keep the tensor's
    leading axes: weight [..., out, in * bits / 32], scales (and biases) [..., out, in / 32].

    Exact types keep their codes; float16 scales and biases are then exact for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 and
    within float16 rounding for Q4_K/Q5_K (whose scales are products of two numbers); float32 keeps every type
    exact. MXFP4 is exact whatever `dtype`. Requantized types go to 8 bits.
    """
    check_type(tensor)
    if not is_quantized(tensor.type_name) or len(tensor.shape) not in (2, 3):
        raise ValueError(f"{tensor.name} ({tensor.type_name}, shape {tensor.shape}) is not a quantized matrix")
    if tensor.type_name in MXFP4_DECODERS:
        weight, scales = _by_rows(tensor, row_order, chunk_elements, _mxfp4)
        return QuantizedArrays(_leading(tensor, weight), _leading(tensor, scales), None, 4, "mxfp4")
    bits = REQUANTIZED_BITS

    def convert(block: GGUFTensor) -> tuple[mx.array, mx.array, mx.array]:
        nonlocal bits
        if block.type_name in EXACT_DECODERS:
            weight, scales, biases, bits = _affine(block)
        else:
            values = mx.array(_dense_numpy(block))
            weight, scales, biases = mx.quantize(values, group_size=GROUP_SIZE, bits=REQUANTIZED_BITS)
        return weight, scales.astype(dtype), biases.astype(dtype)

    weight, scales, biases = _by_rows(tensor, row_order, chunk_elements, convert)
    return QuantizedArrays(_leading(tensor, weight), _leading(tensor, scales), _leading(tensor, biases), bits)


def _leading(tensor: GGUFTensor, arr: mx.array) -> mx.array:
    """A per-row array [rows, n] given the tensor's leading axes back ([E, out, n] for stacked experts)."""
    return arr.reshape(*tensor.shape[:-1], arr.shape[-1]) if len(tensor.shape) > 2 else arr
