"""Quantized linear layers go through models/ops.py (models/linear.py): the loader's layers are mlxd's subclass,
with MLX's results on every backend that computes them with MLX's kernel, the flattened layout included."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlxd.models.linear import QuantizedLinear, route_through_ops
from mlxd.models.ops_cuda import CudaBackend


def test_quantized_layers_become_mlxds_with_the_same_parameters_and_results():
    model = nn.Sequential(nn.Linear(128, 64, bias=True), nn.Linear(64, 32, bias=False), nn.Linear(32, 8))
    nn.quantize(model, 64, 4, class_predicate=lambda path, m: isinstance(m, nn.Linear) and m.weight.shape[1] >= 64)
    x = mx.random.normal((3, 1, 128))
    before, parameters = model(x), model.parameters()
    assert route_through_ops(model) == 2
    kinds = [type(layer) for layer in model.layers]
    assert kinds == [QuantizedLinear, QuantizedLinear, nn.Linear]
    assert mx.array_equal(model(x), before).item()
    assert mx.array_equal(model.layers[0].bias, parameters["layers"][0]["bias"]).item()
    assert route_through_ops(model) == 0  # already swapped


def test_the_flattened_layout_gives_mlxs_product(monkeypatch):
    """ops_cuda.FLAT_ROWS: a batch [rows, 1, in] computed as one [rows, in] product, shaped back."""
    packed, scales, biases = mx.quantize(mx.random.normal((96, 128)), 64, 4)
    x = mx.random.normal((5, 1, 128))
    want = mx.quantized_matmul(x, packed, scales, biases, transpose=True, group_size=64, bits=4)
    monkeypatch.setattr("mlxd.models.ops_cuda.FLAT_ROWS", True)
    got = CudaBackend().quantized_matmul(x, packed, scales, biases, True, 64, 4, "affine")
    assert got.shape == want.shape == (5, 1, 96)
    assert mx.allclose(got, want, atol=1e-5).item()
