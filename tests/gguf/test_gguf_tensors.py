"""Every GGML type against the `gguf` package's own numpy dequantization, on random blocks of every bit pattern."""

from __future__ import annotations

import gc

import mlx.core as mx
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from mlxd.errors import ModelLoadError
from mlxd.loading.gguf import tensors
from mlxd.loading.gguf.reader import GGUFTensor

# GGML type -> byte offsets of the float16 fields of one block; every other byte is random.
F16_FIELDS = {
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q8_0": (0,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q6_K": (208,),
}
EXACT = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K"]
# float16 scales/biases represent these types' scales exactly (an f16 times a power of two or itself).
EXACT_IN_F16 = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
ROWS, COLS = 6, 512


def random_tensor(type_name: str, rows: int = ROWS, cols: int = COLS, seed: int = 0) -> GGUFTensor:
    rng = np.random.default_rng(seed)
    if type_name in ("F32", "F16", "BF16"):
        values = rng.standard_normal((rows, cols)).astype(np.float32)
        if type_name == "BF16":
            raw = (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        else:
            raw = values.astype(np.float32 if type_name == "F32" else np.float16).view(np.uint8)
        return GGUFTensor("t.weight", type_name, (rows, cols), raw.reshape(-1))
    block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    blocks = rng.integers(0, 256, size=(rows * cols // block, block_bytes), dtype=np.uint8)
    for offset in F16_FIELDS.get(type_name, ()):  # MXFP4 has none: any exponent byte is a value
        # Block scales span a realistic range of magnitudes, both signs (ggml's mins are stored negated).
        d = (rng.standard_normal(len(blocks)) * 10.0 ** rng.uniform(-4, 0, len(blocks))).astype(np.float16)
        blocks[:, offset : offset + 2] = d.view(np.uint8).reshape(-1, 2)
    return GGUFTensor("t.weight", type_name, (rows, cols), blocks.reshape(-1))


def reference(t: GGUFTensor) -> np.ndarray:
    return gguf_dequantize(t.raw.reshape(t.shape[0], -1), GGMLQuantizationType[t.type_name]).astype(np.float32)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_pack_matches_mlx_layout(bits):
    codes = np.random.default_rng(bits).integers(0, 2**bits, size=(3, 256), dtype=np.uint8)
    ones, zeros = mx.ones((3, 8)), mx.zeros((3, 8))
    unpacked = mx.dequantize(mx.array(tensors.pack(codes, bits)), ones, zeros, group_size=32, bits=bits)
    np.testing.assert_array_equal(np.array(unpacked), codes.astype(np.float32))


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16", *EXACT])
def test_dense_is_bit_exact(type_name):
    t = random_tensor(type_name)
    got = np.array(tensors.dense(t, mx.float32))
    np.testing.assert_array_equal(got, reference(t))


@pytest.mark.parametrize("type_name", EXACT)
def test_quantized_float32_is_bit_exact(type_name):
    t = random_tensor(type_name, seed=1)
    q = tensors.quantized(t, mx.float32)
    got = mx.dequantize(q.weight, q.scales, q.biases, group_size=32, bits=q.bits)
    np.testing.assert_array_equal(np.array(got), reference(t))


@pytest.mark.parametrize("type_name", EXACT)
def test_quantized_float16_scales(type_name):
    """float16 scales: exact for the 32-value formats, within float16 rounding for K-quants' products."""
    t = random_tensor(type_name, seed=2)
    exact = tensors.quantized(t, mx.float32)
    half = tensors.quantized(t, mx.float16)
    np.testing.assert_array_equal(np.array(half.weight), np.array(exact.weight))
    for got, want in ((half.scales, exact.scales), (half.biases, exact.biases)):
        got, want = np.array(got.astype(mx.float32)), np.array(want)
        if type_name in EXACT_IN_F16:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=2.0**-11, atol=6e-8)  # f16 half-ulp; subnormal floor


@pytest.mark.parametrize("type_name", tensors.REQUANTIZED_TYPES)
def test_requantized_types(type_name):
    t = random_tensor(type_name, seed=3)
    want = reference(t)
    np.testing.assert_array_equal(np.array(tensors.dense(t, mx.float32)), want)
    q = tensors.quantized(t, mx.float32)
    assert q.bits == 8
    got = np.array(mx.dequantize(q.weight, q.scales, q.biases, group_size=32, bits=8))
    # MLX snaps the zero point onto the grid, so the error bound is one 8-bit step (1/255 of the group's range).
    step = np.repeat(np.abs(np.array(q.scales)), 32, axis=1)
    assert np.all(np.abs(got - want) <= step * (1 + 1e-3) + 1e-7)


def test_row_order_moves_whole_rows():
    t = random_tensor("Q4_K", seed=4)
    order = np.array([5, 3, 1, 0, 2, 4])
    np.testing.assert_array_equal(np.array(tensors.dense(t, mx.float32, order)), reference(t)[order])
    q = tensors.quantized(t, mx.float32, order)
    got = mx.dequantize(q.weight, q.scales, q.biases, group_size=32, bits=q.bits)
    np.testing.assert_array_equal(np.array(got), reference(t)[order])


def test_vectors_keep_their_shape():
    t = GGUFTensor("blk.0.attn_norm.weight", "F32", (4,), np.arange(4, dtype=np.float32).view(np.uint8))
    assert tensors.dense(t, mx.float16).shape == (4,)


def test_unknown_type_is_named():
    t = GGUFTensor("blk.0.ffn_up.weight", "IQ4_NL", (2, 32), np.zeros(36, dtype=np.uint8))
    with pytest.raises(ModelLoadError, match="blk.0.ffn_up.weight has GGML type IQ4_NL"):
        tensors.dense(t, mx.float32)


@pytest.mark.parametrize("type_name", ["F16", "Q8_0", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("chunk_rows", [1, 4])  # 4 does not divide the 6 rows: the last block is short
def test_conversion_by_blocks_of_rows_is_the_same(type_name, chunk_rows):
    t = random_tensor(type_name, seed=5)
    order = np.array([5, 3, 1, 0, 2, 4])
    chunk = chunk_rows * COLS
    for row_order in (None, order):
        whole = tensors.dense(t, mx.float32, row_order)
        np.testing.assert_array_equal(np.array(tensors.dense(t, mx.float32, row_order, chunk_elements=chunk)),
                                      np.array(whole))
        if type_name != "F16":
            want = tensors.quantized(t, mx.float16, row_order)
            got = tensors.quantized(t, mx.float16, row_order, chunk_elements=chunk)
            assert got.bits == want.bits
            for name in ("weight", "scales", "biases"):
                np.testing.assert_array_equal(np.array(getattr(got, name)), np.array(getattr(want, name)))


def _conversion_peak(t: GGUFTensor, chunk_elements: int) -> int:
    """Peak MLX memory above what was live before converting t to float16 with blocks of chunk_elements."""
    gc.collect()
    mx.synchronize()
    mx.clear_cache()
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    mx.eval(tensors.dense(t, mx.float16, chunk_elements=chunk_elements))
    return mx.get_peak_memory() - before


def test_large_tensor_temporaries_stay_near_one_block():
    rows = 512
    t = random_tensor("Q8_0", rows=rows, cols=COLS, seed=6)
    result = rows * COLS * 2
    block = 8 * COLS
    # The result, a few block-sized temporaries (float32 values, codes, scales) and allocator rounding.
    bound = result + 4 * block * 4 + (64 << 10)
    assert _conversion_peak(t, block) < bound
    # Converting the whole tensor at once keeps its float32 values next to the result: the bound tells them apart.
    assert _conversion_peak(t, rows * COLS) > bound
