"""Stacked experts' tensors [E, out, in] (llama.cpp's ffn_*_exps) and MXFP4 (ggml type 39): kept quantized per
expert row in MLX's layout, the codes the `gguf` package decodes, and through the gathered quantized matmul of
QuantizedSwitchLinear the products of the dequantized experts."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from mlxd.loading.gguf import quants, tensors
from mlxd.loading.gguf.reader import GGUFTensor
from mlxd.models.moe import QuantizedSwitchLinear
from tests.gguf.test_gguf_tensors import EXACT, random_tensor

EXPERTS, OUT, IN = 3, 4, 512
# Every GGML type the loader keeps quantized: exact affine repacks, MXFP4, and 8-bit requantizations.
KEPT = [*EXACT, "MXFP4", *tensors.REQUANTIZED_TYPES]


def stacked(type_name: str, seed: int = 0) -> GGUFTensor:
    """Random blocks of every bit pattern (test_gguf_tensors.random_tensor) as one [E, out, in] tensor; MXFP4's
    exponents near 2^0, so products stay finite."""
    t = random_tensor(type_name, EXPERTS * OUT, IN, seed=seed)
    if type_name == "MXFP4":
        blocks = t.raw.reshape(-1, 17).copy()
        blocks[:, 0] = np.random.default_rng(seed).integers(120, 131, size=len(blocks))
        t = GGUFTensor(t.name, type_name, t.shape, blocks.reshape(-1))
    return GGUFTensor("blk.0.ffn_up_exps.weight", type_name, (EXPERTS, OUT, IN), t.raw)


def reference(t: GGUFTensor) -> np.ndarray:
    return gguf_dequantize(t.raw.reshape(-1, t.raw.size // (EXPERTS * OUT)),
                           GGMLQuantizationType[t.type_name]).astype(np.float32).reshape(t.shape)


def dequantized(q: tensors.QuantizedArrays) -> mx.array:
    return mx.dequantize(q.weight, q.scales, q.biases, group_size=32, bits=q.bits, mode=q.mode, dtype=mx.float32)


@pytest.mark.parametrize("type_name", KEPT)
def test_stacked_experts_are_their_rows_converted_as_a_matrix(type_name):
    """An [E, out, in] tensor gets the arrays of its E * out rows converted as one matrix, with the expert axis
    back in front: per expert row, as ggml's blocks lie."""
    t = stacked(type_name)
    q = tensors.quantized(t, mx.float32)
    rows = tensors.quantized(GGUFTensor(t.name, type_name, (EXPERTS * OUT, IN), t.raw), mx.float32)
    assert (q.bits, q.mode) == (rows.bits, rows.mode) and q.weight.shape == (EXPERTS, OUT, IN * q.bits // 32)
    for name in ("weight", "scales", "biases"):
        got, want = getattr(q, name), getattr(rows, name)
        assert (got is None) == (want is None) == (name == "biases" and type_name == "MXFP4")
        if got is not None:
            assert got.shape[:2] == (EXPERTS, OUT) and mx.array_equal(got.flatten(0, 1), want)
    if type_name not in tensors.REQUANTIZED_TYPES:
        np.testing.assert_array_equal(np.array(dequantized(q)), reference(t))
    np.testing.assert_array_equal(np.array(tensors.dense(t, mx.float32)), reference(t))


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0", "Q5_1", "Q4_K", "Q5_K", "MXFP4", "Q6_K"])
def test_kept_experts_multiply_as_their_dequantized_matrices(type_name):
    """Tokens routed to experts through QuantizedSwitchLinear (mx.gather_qmm) against x @ W_e^T with the
    experts' float32 values; Q6_K's requantized to 8 bits."""
    q = tensors.quantized(stacked(type_name, seed=1), mx.float32)
    layer = QuantizedSwitchLinear(IN, OUT, EXPERTS, group_size=32, bits=q.bits, mode=q.mode)
    layer.update({"weight": q.weight, "scales": q.scales} | ({"biases": q.biases} if q.biases is not None else {}))
    w = np.array(dequantized(q), dtype=np.float64)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 1, 1, IN)).astype(np.float32)
    indices = rng.integers(0, EXPERTS, size=(6, 2))
    got = np.array(layer(mx.array(x), mx.array(indices)))  # [tokens, k, 1, out]
    want = np.stack([[x[t, 0, 0] @ w[e].T for e in row] for t, row in enumerate(indices)])[:, :, None]
    scale = np.abs(x).max() * np.abs(w).sum(-1).max()  # bounds every product's magnitude
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)


def test_mxfp4_blocks_move_only_their_nibbles():
    """ggml's block: exponent byte, then value j in the low nibble of byte j and value j + 16 in its high one;
    MLX's: values 2j and 2j + 1 in byte j, the exponent as its scale."""
    codes = np.arange(32, dtype=np.uint8) % 16
    block = np.concatenate([[130], codes[:16] | (codes[16:] << 4)]).astype(np.uint8)[None]
    packed, scales = quants.mxfp4(block)
    assert scales.tolist() == [[130]]
    np.testing.assert_array_equal(packed[0], codes[0::2] | (codes[1::2] << 4))


def test_mxfp4_of_every_exponent_is_what_ggml_decodes():
    """Random codes under each exponent (0 and 1, which ggml decodes as subnormal halves, and 253-254, which
    overflow to infinities, included), and values quantized by the `gguf` package, dequantize in MLX's mxfp4 mode
    to ggml's values bit for bit. Exponent 255 (NaN in the OCP MX format, which MLX follows) is the one difference:
    ggml's quantizer never writes it (at most 252 for float32 input)."""
    rng = np.random.default_rng(3)
    blocks = rng.integers(0, 256, size=(255, 17), dtype=np.uint8)
    blocks[:, 0] = np.arange(255)
    t = GGUFTensor("blk.0.ffn_down_exps.weight", "MXFP4", (3, 5, 544), blocks.reshape(-1))
    q = tensors.quantized(t, mx.float16)  # the dtype does not touch E8M0 scales
    assert q.scales.dtype == mx.uint8 and q.weight.shape == (3, 5, 68)
    with np.errstate(over="ignore"):
        want = gguf_dequantize(blocks.reshape(15, -1), GGMLQuantizationType.MXFP4).reshape(t.shape)
    np.testing.assert_array_equal(np.array(dequantized(q)), want)
    values = rng.standard_normal((4, 64)).astype(np.float32) * 2.0 ** rng.integers(-6, 6, size=(4, 1))
    raw = gguf_quantize(values, GGMLQuantizationType.MXFP4)
    q = tensors.quantized(GGUFTensor("w", "MXFP4", (4, 64), raw.reshape(-1)), mx.float32)
    np.testing.assert_array_equal(np.array(dequantized(q)), gguf_dequantize(raw, GGMLQuantizationType.MXFP4))


@pytest.mark.parametrize("shape", [(IN,), (2, 2, 2, IN)])
def test_only_matrices_and_stacked_experts_are_kept_quantized(shape):
    t = GGUFTensor("t.weight", "Q8_0", shape, np.zeros(int(np.prod(shape)) // 32 * 34, dtype=np.uint8))
    with pytest.raises(ValueError, match="is not a quantized matrix"):
        tensors.quantized(t, mx.float32)
