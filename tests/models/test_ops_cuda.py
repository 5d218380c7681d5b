"""The CUDA backend's own kernels (models/ops_cuda.py). On a CUDA device: a Gated DeltaNet layer's decode step
through the fused kernels equals the same step through the MLX ops of models/gated_delta.py, outputs and both
states, for the head layouts the models have (grouped and tiled value heads, key widths that fill, cut and
undershoot a warp), in float32 and bfloat16, with inputs that are slices of a wider projection as the unfused and
fused layers give them. Skipped elsewhere; a CPU run checks that the backends without the kernels decline, and the
CUDA backend's quantized matmul (plain MLX ops) everywhere."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxd.models import ops
from mlxd.models.base import DeltaHeads
from mlxd.models.ops_cuda import CudaBackend
from mlxd.models.qwen3_5 import GatedDeltaNet, ModelArgs
from mlxd.models.recurrent_cache import RecurrentCache

on_cuda = pytest.mark.skipif(not mx.cuda.is_available(), reason="needs MLX's CUDA backend")


def _layer(hk: int, hv: int, dk: int, dv: int, tiled: bool, fused: bool, dtype: mx.Dtype) -> GatedDeltaNet:
    args = ModelArgs.from_dict({
        "model_type": "qwen3_5", "hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 64,
        "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "vocab_size": 32,
        "linear_num_key_heads": hk, "linear_num_value_heads": hv, "linear_key_head_dim": dk,
        "linear_value_head_dim": dv, "linear_value_head_order": "tiled" if tiled else "grouped"})
    layer = GatedDeltaNet(args, fused)
    mx.random.seed(hk * 1000 + dk + dv + tiled)
    layer.update(nn.utils.tree_map(lambda p: mx.random.normal(p.shape) * 0.3, layer.parameters()))
    layer.A_log = mx.random.uniform(-1.0, 1.0, (hv,))
    layer.set_dtype(dtype)
    return layer


def _step(layer: GatedDeltaNet, x: mx.array, conv_state: mx.array, state: mx.array, kernels: str):
    with ops.using(kernels):
        cache = RecurrentCache()
        cache.advance(conv_state, state, 5)
        out = layer(x, cache)
        mx.eval(out, cache.conv_state, cache.recurrent_state)
        return out, cache.conv_state, cache.recurrent_state


@on_cuda
@pytest.mark.parametrize("dtype,tolerance", [(mx.float32, 1e-4), (mx.bfloat16, 3e-2)])
@pytest.mark.parametrize("hk,hv,dk,dv,tiled", [(2, 4, 128, 128, False), (2, 4, 64, 32, True), (1, 3, 24, 8, False),
                                               (3, 3, 40, 6, False)])
@pytest.mark.parametrize("fused", [False, True])
def test_fused_decode_step_equals_the_mlx_ops(dtype, tolerance, hk, hv, dk, dv, tiled, fused):
    layer = _layer(hk, hv, dk, dv, tiled, fused, dtype)
    rows, channels = 3, 2 * hk * dk + hv * dv
    x = mx.random.normal((rows, 1, 64)).astype(dtype)
    conv_state = mx.random.normal((rows, 3, channels)).astype(dtype)
    state = mx.random.normal((rows, hv, dv, dk)) * 0.5
    want = _step(layer, x, conv_state, state, "mlx")
    got = _step(layer, x, conv_state, state, "cuda")
    for name, w, g in zip(("output", "conv state", "recurrent state"), want, got, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        scale = max(1.0, mx.abs(w.astype(mx.float32)).max().item())
        assert mx.abs(g.astype(mx.float32) - w.astype(mx.float32)).max().item() <= tolerance * scale, name


@on_cuda
def test_the_loader_chooses_the_cuda_kernels_on_a_cuda_gpu():
    assert ops.choose(mx.Device(mx.gpu), "bfloat16") == "cuda"
    assert ops.choose(mx.Device(mx.cpu), "float32") == "numpy"


def test_backends_without_the_kernels_decline():
    heads = DeltaHeads(1, 1, 4, 4)
    for kernels in ("mlx", "numpy"):
        with ops.using(kernels):
            assert ops.gated_delta_decode(mx.zeros((1, 1, 12)), mx.zeros((1, 1, 1)), mx.zeros((1, 1, 1)),
                                          mx.zeros((12, 4)), mx.zeros((1, 3, 12)), mx.zeros((1,)), mx.zeros((1,)),
                                          mx.zeros((1, 1, 4, 4)), heads) is None


@pytest.mark.parametrize("transpose", [False, True])
def test_quantized_matmul_either_way_equals_mlx(transpose):
    """x @ W with W quantized along its rows has no MLX kernel on CUDA; the CUDA backend dequantizes W for it
    (runs anywhere: no custom kernel)."""
    weight = mx.random.normal((4, 64, 32), key=mx.random.key(7))  # [batch, rows, columns], quantized along columns
    quantized, scales, biases = mx.quantize(weight, 32, 8)
    x = mx.random.normal((4, 1, 64 if not transpose else 32), key=mx.random.key(8))
    want = mx.quantized_matmul(x, quantized, scales, biases, transpose=transpose, group_size=32, bits=8)
    got = CudaBackend().quantized_matmul(x, quantized, scales, biases, transpose, 32, 8, "affine")
    assert got.shape == want.shape and mx.allclose(got, want, atol=1e-4)
