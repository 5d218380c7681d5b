"""gpt-oss's clamped SwiGLU (ops.clamped_swiglu) against a float64 reference written from transformers'
GptOssExperts._apply_gate (MOE_NOTES §3.2), in both backends; and one gpt-oss expert computed from the MXFP4
fixture through MLX's quantized matmul, the way the gpt_oss model does, against the float64 dense expert."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxd.loading import mxfp4
from mlxd.models import ops, ops_cpu_numpy, ops_mlx
from mlxd.models.ops_cpu_numpy import NumpyBackend

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
LIMIT, ALPHA = 7.0, 1.702


def reference(gate, up, limit=LIMIT, alpha=ALPHA):
    """gate clamped above only, up on both sides, (up + 1) * gate * sigmoid(alpha * gate), in float64."""
    g = np.minimum(np.asarray(gate, dtype=np.float64), limit)
    u = np.clip(np.asarray(up, dtype=np.float64), -limit, limit)
    return (u + 1) * g / (1 + np.exp(-alpha * g))


def _gate_up(rows, width=96, seed=0):
    """Interleaved gate/up columns of a fused projection's output, spread well past +-limit."""
    fused = mx.random.normal((rows, 2 * width), key=mx.random.key(seed)) * 9
    return fused[..., 0::2], fused[..., 1::2]


@pytest.mark.parametrize("rows", [3, 40, 600])
def test_mlx_path_equals_float64(rows):
    gate, up = _gate_up(rows)
    want = reference(gate, up)
    assert np.abs(np.asarray(ops_mlx.clamped_swiglu(gate, up, LIMIT, ALPHA)) - want).max() < 2e-5
    assert np.allclose(np.asarray(ops_mlx.MLXBackend().clamped_swiglu(gate, up, LIMIT, ALPHA)), want,
                       rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("rows", [3, 40, 600])
def test_numpy_path_equals_float64(rows):
    gate, up = _gate_up(rows)
    got = ops_cpu_numpy.clamped_swiglu(gate, up, LIMIT, ALPHA)
    assert got.dtype == mx.float32 and got.shape == gate.shape
    assert np.allclose(np.asarray(got), reference(gate, up), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("kernels", ops.BACKENDS)
def test_clamps_and_the_plus_one(kernels):
    """gate above the limit counts as the limit, below -limit it is not clamped (a tiny negative value, not the
    limit's); up is clamped both ways and shifted by one, so up = -1 zeroes the output."""
    gate = mx.array([[9.0, 7.0, -9.0, 1.0, 2.0, 0.5] * 32] * 200)
    up = mx.array([[0.0, 0.0, 0.0, -1.0, 20.0, -20.0] * 32] * 200)
    ops.use(kernels)
    try:
        got = np.asarray(ops.clamped_swiglu(gate, up, LIMIT, ALPHA))[0, :6].astype(np.float64)
    finally:
        ops.use("mlx")
    sig = 1 / (1 + np.exp(-ALPHA * np.array([7.0, 7.0, -9.0, 1.0, 2.0, 0.5])))
    want = np.array([7 * sig[0], 7 * sig[1], -9 * sig[2], 0.0, 8 * 2 * sig[4], -6 * 0.5 * sig[5]])
    assert np.allclose(got, want, rtol=2e-6, atol=1e-12)
    assert got[2] < 0 and abs(got[2]) < 1e-5


def test_half_precision_stays_in_mlx_and_keeps_its_dtype():
    gate, up = (a.astype(mx.bfloat16) for a in _gate_up(300))
    got = NumpyBackend().clamped_swiglu(gate, up, LIMIT, ALPHA)
    assert got.dtype == mx.bfloat16
    want = reference(gate.astype(mx.float32), up.astype(mx.float32))
    assert np.allclose(np.asarray(got.astype(mx.float32)), want, rtol=3e-2, atol=1e-2)


def test_numpy_kernel_taken_from_swiglu_rows_on(monkeypatch):
    """By rows of the activation (tokens x experts per token), whatever the MoE layer's layout."""
    calls = []
    monkeypatch.setattr(ops_cpu_numpy, "clamped_swiglu", lambda *a: calls.append(a[0].shape) or a[0])
    rows = ops_cpu_numpy.SWIGLU_ROWS
    numpy = NumpyBackend()
    for shape in [(rows, 8), (rows // 4, 4, 1, 8), (1, rows // 4, 4, 8), (2 * rows, 1, 8)]:
        numpy.clamped_swiglu(mx.zeros(shape), mx.zeros(shape), LIMIT, ALPHA)
    assert len(calls) == 4
    calls.clear()
    for shape in [(rows - 1, 8), (16, 4, 1, 8), (1, 1, 4, 8)]:
        numpy.clamped_swiglu(mx.zeros(shape), mx.zeros(shape), LIMIT, ALPHA)
    numpy.clamped_swiglu(mx.zeros((rows, 8), mx.bfloat16), mx.zeros((rows, 8), mx.bfloat16), LIMIT, ALPHA)
    assert calls == []


@pytest.fixture(scope="module")
def experts():
    """Layer 1's experts: (MXFP4 arrays in MLX's layout, the dense [E, in, out] float32 weights, the biases)."""
    packed = mxfp4.unpack(dict(mx.load(str(PARITY / "gpt_oss" / "model.safetensors"))))
    dense = mx.load(str(PARITY / "gpt_oss_dense" / "model.safetensors"))
    prefix = "model.layers.1.mlp.experts."
    return ({n: (packed[f"{prefix}{n}.weight"], packed[f"{prefix}{n}.scales"]) for n in ("gate_up_proj", "down_proj")},
            {n: dense[prefix + n] for n in ("gate_up_proj", "down_proj")},
            {n: dense[f"{prefix}{n}_bias"] for n in ("gate_up_proj", "down_proj")})


def _reference_expert(x, e, dense, bias):
    f64 = {n: np.asarray(w, dtype=np.float64) for n, w in dense.items()}
    b64 = {n: np.asarray(b, dtype=np.float64) for n, b in bias.items()}
    gu = np.asarray(x, dtype=np.float64) @ f64["gate_up_proj"][e] + b64["gate_up_proj"][e]
    return reference(gu[..., 0::2], gu[..., 1::2]) @ f64["down_proj"][e] + b64["down_proj"][e]


@pytest.mark.parametrize("kernels", ops.BACKENDS)
@pytest.mark.parametrize("split", ["columns", "rows_at_load"])
def test_gpt_oss_expert_from_mxfp4_equals_float64(experts, kernels, split):
    """Either keep gate_up fused and take the interleaved output columns (gate even, up odd), or split the rows
    of the quantized weight, its scales and the bias at load ([::2] gate, [1::2] up; each row has its own
    scales, so this is exact) and run two matmuls. Split rows must be made contiguous: MLX 0.32.4's CUDA
    quantized_matmul has no kernel for a strided weight ("No implementation for problem shape")."""
    quantized, dense, bias = experts
    x = mx.random.normal((150, 64), key=mx.random.key(5))
    qmm = {"transpose": True, "group_size": 32, "bits": 4, "mode": "mxfp4"}
    (gu_w, gu_s), (down_w, down_s) = quantized["gate_up_proj"], quantized["down_proj"]
    ops.use(kernels)
    try:
        for e in range(6):
            if split == "columns":
                gu = mx.quantized_matmul(x, gu_w[e], gu_s[e], **qmm) + bias["gate_up_proj"][e]
                gate, up = gu[..., 0::2], gu[..., 1::2]
            else:
                gate_w, up_w, gate_s, up_s = (mx.contiguous(a[e, i::2]) for a in (gu_w, gu_s) for i in (0, 1))
                gate = mx.quantized_matmul(x, gate_w, gate_s, **qmm) + bias["gate_up_proj"][e, 0::2]
                up = mx.quantized_matmul(x, up_w, up_s, **qmm) + bias["gate_up_proj"][e, 1::2]
            h = ops.clamped_swiglu(gate, up, LIMIT, ALPHA)
            got = mx.quantized_matmul(h, down_w[e], down_s[e], **qmm) + bias["down_proj"][e]
            want = _reference_expert(x, e, dense, bias)
            assert np.abs(np.asarray(got) - want).max() < 1e-5 * np.abs(want).max()
    finally:
        ops.use("mlx")
